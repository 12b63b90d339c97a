"""Run configs: defaults, validation with field-named errors, the resolved
form written to RUN_DIR/config.json, and the run id.

`resolve(raw)` takes a (partial) run config as loaded from YAML and returns
the fully resolved dict of docs/design.md, or raises ConfigError naming the
field and what is allowed. Types, ranges and unknown keys are checked by a
JSON Schema (jsonschema); relations between fields (top-k vs experts,
granularity vs width, warmup vs steps) by the checks below it.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import re
from pathlib import Path

import yaml

from rlrs.components import COMPONENTS
from rlrs.errors import ConfigError, check_schema
from rlrs.schedule import SHAPES

MOE_DEFAULTS = {
    "n_experts": 8,
    "top_k": 1,
    "granularity": 1,
    "capacity_factor": 1.0,
    "load_balance_weight": 0.01,
    "z_loss_weight": 0.001,
}

DEFAULTS = {
    "meta": {"study": None, "size": None, "arm": None, "sweep": None, "tags": {}},
    "seed": 0,
    "model": {
        "vocab_size": None,  # from the tokenizer
        "seq_len": 128,
        "d_model": 128,
        "n_layers": 2,
        "n_heads": 4,
        "d_ff": None,  # 4 * d_model
        "init_scale": 0.15,
        "moe": None,
    },
    "optim": {"lr": 3e-3, "weight_decay": 0.1, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "grad_clip": 1.0},
    "schedule": {
        "shape": "cosine",
        "warmup_steps": None,  # ceil(warmup_fraction * steps)
        "warmup_fraction": 0.01,
        "final_lr_fraction": 0.0444,
        "decay_fraction": 0.2,
        "multipliers": {},
    },
    "data": {
        "corpus": "austen",
        "tokenizer": "bytes",
        "bpe_vocab_size": 4096,
        "val_fraction": 0.05,
        "eval_tokens": 65536,
    },
    "train": {
        "steps": 200,
        "batch_size": 16,
        "eval_interval": 50,
        "checkpoint_interval": 50,
        "log_interval": 10,
        "device": "cpu",
        "precision": "fp32",
        "threads": 1,
        "keep_checkpoint": False,
        # Steps between exact per-component update sizes (update_<c>; null on
        # the steps between): None = log_interval. Recording only, so operational.
        "update_size_interval": None,
        # torch.compile the model's forward/backward for training steps (eval
        # stays eager). Pays off only on long runs (bench/README.md: break-even);
        # operational like `threads`: the same run, float rounding aside.
        "compile": False,
    },
}

# Settings that change how a run is executed but not what it computes: left
# out of the run id so that, say, checkpointing more often reuses finished runs.
OPERATIONAL = {"train": ("checkpoint_interval", "log_interval", "keep_checkpoint", "threads", "update_size_interval", "compile")}

_pos_int = {"type": "integer", "minimum": 1}
_nonneg_int = {"type": "integer", "minimum": 0}
_pos_num = {"type": "number", "exclusiveMinimum": 0}
_nonneg_num = {"type": "number", "minimum": 0}
_fraction = {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1}


def _obj(props: dict, required: tuple = ()) -> dict:
    return {"type": "object", "properties": props, "additionalProperties": False, "required": list(required)}


_multiplier = _obj({"start": _pos_num, "end": _pos_num}, ("start", "end"))

SCHEMA = _obj(
    {
        "meta": _obj(
            {
                "study": {"type": ["string", "null"]},
                "size": {"type": ["string", "null"]},
                "arm": {"type": ["string", "null"]},
                "sweep": {"type": ["string", "null"]},
                "tags": {"type": "object"},
            }
        ),
        "seed": _nonneg_int,
        "model": _obj(
            {
                "vocab_size": {"anyOf": [_pos_int, {"type": "null"}]},
                "seq_len": _pos_int,
                "d_model": _pos_int,
                "n_layers": _pos_int,
                "n_heads": _pos_int,
                "d_ff": {"anyOf": [_pos_int, {"type": "null"}]},
                "init_scale": _pos_num,
                "moe": {
                    "anyOf": [
                        {"type": "null"},
                        _obj(
                            {
                                "n_experts": _pos_int,
                                "top_k": _pos_int,
                                "granularity": _pos_int,
                                "capacity_factor": _pos_num,
                                "load_balance_weight": _nonneg_num,
                                "z_loss_weight": _nonneg_num,
                            }
                        ),
                    ]
                },
            }
        ),
        "optim": _obj(
            {
                "lr": _pos_num,
                "weight_decay": _nonneg_num,
                "beta1": {"type": "number", "minimum": 0, "exclusiveMaximum": 1},
                "beta2": {"type": "number", "minimum": 0, "exclusiveMaximum": 1},
                "eps": _pos_num,
                "grad_clip": {"anyOf": [_pos_num, {"type": "null"}]},
            }
        ),
        "schedule": _obj(
            {
                "shape": {"enum": list(SHAPES)},
                "warmup_steps": {"anyOf": [_nonneg_int, {"type": "null"}]},
                "warmup_fraction": {"type": "number", "minimum": 0, "exclusiveMaximum": 1},
                "final_lr_fraction": {"type": "number", "minimum": 0},
                "decay_fraction": _fraction,
                "multipliers": {
                    "type": "object",
                    "propertyNames": {"enum": list(COMPONENTS)},
                    "additionalProperties": _multiplier,
                },
            }
        ),
        "data": _obj(
            {
                "corpus": {"type": "string", "minLength": 1},
                "tokenizer": {"enum": ["bytes", "bpe"]},
                "bpe_vocab_size": {"type": "integer", "minimum": 257},
                "val_fraction": _fraction,
                "eval_tokens": _pos_int,
            }
        ),
        "train": _obj(
            {
                "steps": _pos_int,
                "batch_size": _pos_int,
                "eval_interval": _pos_int,
                "checkpoint_interval": _pos_int,
                "log_interval": _pos_int,
                "device": {"enum": ["cpu", "cuda", "auto"]},
                "precision": {"enum": ["fp32", "bf16"]},
                "threads": _pos_int,
                "keep_checkpoint": {"type": "boolean"},
                "update_size_interval": {"anyOf": [_pos_int, {"type": "null"}]},
                "compile": {"type": "boolean"},
            }
        ),
        "run_id": {"type": "string"},  # present in a config.json read back
    }
)


def _merge(base: dict, over: dict) -> dict:
    """Deep merge `over` onto a copy of `base` (dicts merge, anything else replaces)."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k != "multipliers":
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def resolve(raw: dict) -> dict:
    """Validate a run config and fill every default. Idempotent."""
    if not isinstance(raw, dict):
        raise ConfigError("<config>", f"expected a mapping of settings, got {type(raw).__name__}")
    raw = {k: v for k, v in raw.items() if k != "run_id"}
    moe_raw = (raw.get("model") or {}).get("moe") if isinstance(raw.get("model"), dict) else None
    cfg = _merge(DEFAULTS, raw)
    if isinstance(moe_raw, dict):
        cfg["model"]["moe"] = _merge(MOE_DEFAULTS, moe_raw)
    check_schema(cfg, SCHEMA, "<config>")

    model, sched, train = cfg["model"], cfg["schedule"], cfg["train"]
    steps = train["steps"]

    from rlrs.data import validate_data_config, vocab_size_for

    validate_data_config(cfg["data"])
    vocab = vocab_size_for(cfg["data"])
    if model["vocab_size"] not in (None, vocab):
        raise ConfigError("model.vocab_size", f"{model['vocab_size']} does not match the tokenizer's {vocab}; leave it out")
    model["vocab_size"] = vocab
    if model["d_ff"] is None:
        model["d_ff"] = 4 * model["d_model"]
    if model["d_model"] % model["n_heads"]:
        raise ConfigError("model.n_heads", f"{model['n_heads']} must divide d_model={model['d_model']}")
    moe = model["moe"]
    if moe:
        if moe["top_k"] > moe["n_experts"]:
            raise ConfigError("model.moe.top_k", f"{moe['top_k']} is larger than n_experts={moe['n_experts']}; allowed: 1..{moe['n_experts']}")
        if model["d_ff"] % moe["granularity"]:
            divisors = [g for g in range(1, model["d_ff"] + 1) if model["d_ff"] % g == 0 and g <= 64]
            raise ConfigError(
                "model.moe.granularity",
                f"{moe['granularity']} does not divide the expert width d_ff={model['d_ff']}; allowed: {divisors}",
            )

    if sched["warmup_steps"] is None:
        sched["warmup_steps"] = math.ceil(sched["warmup_fraction"] * steps)
    del sched["warmup_fraction"]
    if sched["warmup_steps"] >= steps:
        raise ConfigError("schedule.warmup_steps", f"{sched['warmup_steps']} must be shorter than training (train.steps={steps})")

    sched["multipliers"] = _resolve_multipliers(sched["multipliers"], moe is not None)
    return cfg


def present_components(is_moe: bool) -> list[str]:
    """The components with parameters in a dense or an MoE model."""
    absent = {"ffn"} if is_moe else {"router", "experts"}
    return [c for c in COMPONENTS if c not in absent]


def _resolve_multipliers(table: dict, is_moe: bool) -> dict:
    """Complete the table: every component the model has, (1, 1) where missing.

    Entries for components this model lacks (ffn in an MoE, experts in a dense
    model) are dropped, so one arm table can serve dense and MoE sizes.
    """
    norm = table.get("norm")
    if norm and (norm["start"], norm["end"]) != (1, 1):
        raise ConfigError("schedule.multipliers.norm", "norm always runs at the base rate; allowed: {start: 1, end: 1} or leave it out")
    out = {}
    for comp in present_components(is_moe):
        m = table.get(comp, {"start": 1.0, "end": 1.0})
        out[comp] = {"start": float(m["start"]), "end": float(m["end"])}
    return out


def identity(resolved: dict) -> dict:
    """The part of a resolved config that decides what a run computes."""
    out = {k: v for k, v in resolved.items() if k not in ("meta", "run_id")}
    out = copy.deepcopy(out)
    for block, keys in OPERATIONAL.items():
        for key in keys:
            out[block].pop(key, None)
    return out


def run_id(resolved: dict) -> str:
    """12 hex digits of the SHA-256 of the canonical JSON of the run's identity
    (sorted keys, so stable across key order, processes and machines)."""
    canonical = json.dumps(identity(resolved), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


# YAML 1.1 (PyYAML, and so Snakemake's config loader) reads `3e-3` as a string;
# YAML 1.2 and every ML config reader read it as a number. We follow YAML 1.2.
_FLOAT = re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)$")


def yaml12_numbers(obj):
    """Numbers written in exponent form without a dot (`3e-3`, `1e-8`) as
    floats, throughout a loaded YAML document (in place for dicts and lists)."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            obj[k] = yaml12_numbers(v)
    elif isinstance(obj, list):
        obj[:] = [yaml12_numbers(v) for v in obj]
    elif isinstance(obj, str) and _FLOAT.match(obj):
        return float(obj)
    return obj


class _Yaml12Floats(yaml.SafeLoader):
    """Safe loading, with unquoted `3e-3` a float (quoted "3e-3" stays a string)."""


_Yaml12Floats.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))


def load_file(path: Path, what: str = "config") -> dict:
    """Read a YAML or JSON file into a dict (empty file: {})."""
    path = Path(path)
    try:
        with open(path) as f:
            if path.suffix == ".json":
                return json.load(f)
            data = yaml.load(f, Loader=_Yaml12Floats)
    except FileNotFoundError:
        raise ConfigError(str(path), f"{what} file not found") from None
    except (yaml.YAMLError, json.JSONDecodeError) as e:
        raise ConfigError(str(path), f"not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {e}") from None
    return data if data is not None else {}


def load(path: Path) -> dict:
    """Read a run config from YAML or JSON (the raw, unresolved dict)."""
    return load_file(path, "config")
