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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from rlrs.components import COMPONENTS
from rlrs.data import validate_data_config, vocab_size_for
from rlrs.errors import ConfigError, check_schema
from rlrs.parametrization import PARAMETRIZATIONS, ROUTER_PARAMETRIZATIONS, default_attention_mult
from rlrs.schedule import SHAPES

_pos_int = {"type": "integer", "minimum": 1}
_nonneg_int = {"type": "integer", "minimum": 0}
_pos_num = {"type": "number", "exclusiveMinimum": 0}
_nonneg_num = {"type": "number", "minimum": 0}
_fraction = {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1}
_label = {"type": ["string", "null"]}


def _obj(props: dict, required: tuple = ()) -> dict:
    return {"type": "object", "properties": props, "additionalProperties": False, "required": list(required)}


def _nullable(schema: dict) -> dict:
    return {"anyOf": [schema, {"type": "null"}]}


_multiplier = _obj({"start": _pos_num, "end": _pos_num}, ("start", "end"))


@dataclass(frozen=True)
class Field:
    """One run-config setting: its default, what is allowed (JSON Schema), what it means."""

    default: Any
    schema: dict
    doc: str
    operational: bool = False  # changes how a run executes, not what it computes: not part of the run id


# Every run-config field, declared once. DEFAULTS, MOE_DEFAULTS, SCHEMA,
# OPERATIONAL and the docs table (fields_table) are derived from these.
MOE_FIELDS = {
    "n_experts": Field(8, _pos_int, "experts before granularity"),
    "top_k": Field(1, _pos_int, "experts chosen per token, before granularity"),
    "granularity": Field(1, _pos_int, "G: G*n_experts experts of width d_ff/G, top_k*G chosen"),
    "capacity_factor": Field(1.0, _pos_num, "expert capacity as a multiple of the even share of tokens"),
    "load_balance_weight": Field(0.01, _nonneg_num, "weight of the load-balancing loss"),
    "z_loss_weight": Field(0.001, _nonneg_num, "weight of the router z-loss"),
}

# The parametrization (rlrs.parametrization), model.* fields. Under sp the
# muP settings are refused, and all of these are left out of the resolved
# config, so an sp run's config and run id are those of a config without them.
PARAMETRIZATION_FIELDS = {
    "parametrization": Field(
        "sp", {"enum": list(PARAMETRIZATIONS)}, "sp (standard) or mup (muP for MoE, docs/method.md)"
    ),
    "base_d_model": Field(
        None, _nullable(_pos_int), "mup: the width the base lr was tuned at (required); m = d_model / base_d_model"
    ),
    "alpha_in": Field(1.0, _pos_num, "mup: embedding output multiplier"),
    "alpha_out": Field(1.0, _pos_num, "mup: head logits multiplier (times 1/m)"),
    "attention_mult": Field(
        None,
        _nullable(_pos_num),
        "mup: attention logits x attention_mult / d_head; default sqrt(base_d_model / n_heads)",
    ),
    "router_parametrization": Field(
        "sp",
        {"enum": list(ROUTER_PARAMETRIZATIONS)},
        "mup, MoE only: sp (router untouched by m, the authors' branch) or mup (router logits x 1/m)",
    ),
}

FIELDS: dict[str, dict[str, Field] | Field] = {
    "meta": {  # labels only, not part of the run id
        "study": Field(None, _label, "study name (null for a standalone run)"),
        "size": Field(None, _label, "size name from the study"),
        "arm": Field(None, _label, "arm name"),
        "sweep": Field(None, _label, "the part of the study that asked for the run (rlrs.tags)"),
        "tags": Field({}, {"type": "object"}, "the sweep's tags (rlrs.tags)"),
    },
    "seed": Field(0, _nonneg_int, "seed of the initialisation and of the batch order"),
    "model": {
        "vocab_size": Field(None, _nullable(_pos_int), "filled from the tokenizer"),
        "seq_len": Field(128, _pos_int, "tokens per training sequence"),
        "d_model": Field(128, _pos_int, "width"),
        "n_layers": Field(2, _pos_int, "Transformer blocks"),
        "n_heads": Field(4, _pos_int, "attention heads; must divide d_model"),
        "d_ff": Field(
            None,
            _nullable(_pos_int),
            "dense SwiGLU hidden width (MoE: one expert's, before granularity); default 4 * d_model",
        ),
        "init_scale": Field(0.15, _pos_num, "truncated normal std sqrt(init_scale / fan_in)"),
        **PARAMETRIZATION_FIELDS,
        "moe": Field(
            None,
            {"anyOf": [{"type": "null"}, _obj({k: f.schema for k, f in MOE_FIELDS.items()})]},
            "null for a dense model, or the MoE block (model.moe.*)",
        ),
    },
    "optim": {
        "lr": Field(3e-3, _pos_num, "base learning rate"),
        "weight_decay": Field(0.1, _nonneg_num, "AdamW weight decay"),
        "beta1": Field(0.9, {"type": "number", "minimum": 0, "exclusiveMaximum": 1}, "AdamW beta1"),
        "beta2": Field(0.999, {"type": "number", "minimum": 0, "exclusiveMaximum": 1}, "AdamW beta2"),
        "eps": Field(1e-8, _pos_num, "AdamW epsilon"),
        "grad_clip": Field(1.0, _nullable(_pos_num), "gradient norm clip (null: none)"),
    },
    "schedule": {
        "shape": Field("cosine", {"enum": list(SHAPES)}, "base schedule: " + " | ".join(SHAPES)),
        "warmup_steps": Field(None, _nullable(_nonneg_int), "resolved integer; default ceil(warmup_fraction * steps)"),
        "warmup_fraction": Field(
            0.01,
            {"type": "number", "minimum": 0, "exclusiveMaximum": 1},
            "warmup as a fraction of steps when warmup_steps is not given (not kept in the resolved config)",
        ),
        "final_lr_fraction": Field(0.0444, {"type": "number", "minimum": 0}, "f: the schedule ends at lr * f * end"),
        "decay_fraction": Field(0.2, _fraction, "wsd only: the last fraction of steps decays linearly"),
        "multipliers": Field(
            {},
            {"type": "object", "propertyNames": {"enum": list(COMPONENTS)}, "additionalProperties": _multiplier},
            "component -> {start, end}; resolved for every component with parameters, (1, 1) where missing",
        ),
    },
    "data": {
        "corpus": Field("austen", {"type": "string", "minLength": 1}, "austen | text:PATH | tokens:PATH"),
        "tokenizer": Field("bytes", {"enum": ["bytes", "bpe"]}, "bytes | bpe"),
        "bpe_vocab_size": Field(4096, {"type": "integer", "minimum": 257}, "vocabulary of the trained BPE"),
        "val_fraction": Field(0.05, _fraction, "the contiguous validation hold-out at the end of the corpus"),
        "eval_tokens": Field(65536, _pos_int, "the fixed evaluation budget: the same validation tokens for every run"),
    },
    "train": {
        "steps": Field(200, _pos_int, "training steps"),
        "batch_size": Field(16, _pos_int, "sequences per step"),
        "eval_interval": Field(50, _pos_int, "steps between evaluations (and at the last step)"),
        "checkpoint_interval": Field(50, _pos_int, "steps between checkpoints", operational=True),
        "log_interval": Field(10, _pos_int, "steps between progress lines", operational=True),
        "device": Field("cpu", {"enum": ["cpu", "cuda", "auto"]}, "cpu | cuda | auto"),
        "precision": Field("fp32", {"enum": ["fp32", "bf16"]}, "fp32 | bf16 (autocast)"),
        "threads": Field(1, _pos_int, "torch CPU threads", operational=True),
        "keep_checkpoint": Field(False, {"type": "boolean"}, "keep checkpoint.pt after the run", operational=True),
        "update_size_interval": Field(
            None,
            _nullable(_pos_int),
            "steps between exact per-component update sizes (update_<c>, null on the steps between); "
            "null: log_interval",
            operational=True,  # recording only: the same training
        ),
        "compile": Field(
            False,
            {"type": "boolean"},
            "torch.compile the model's forward/backward for training steps (eval stays eager); "
            "pays off on long runs only (bench/README.md: break-even)",
            operational=True,  # like threads: the same run, float rounding aside
        ),
    },
}


def _each(fields=FIELDS, prefix: str = ""):
    """(dotted name, Field) for every field, in declaration order."""
    for key, f in fields.items():
        if isinstance(f, Field):
            yield prefix + key, f
        else:
            yield from _each(f, f"{prefix}{key}.")


def _defaults(fields: dict) -> dict:
    return {k: copy.deepcopy(f.default) if isinstance(f, Field) else _defaults(f) for k, f in fields.items()}


def _schema(fields: dict) -> dict:
    return _obj({k: f.schema if isinstance(f, Field) else _schema(f) for k, f in fields.items()})


DEFAULTS = _defaults(FIELDS)
MOE_DEFAULTS = _defaults(MOE_FIELDS)
SCHEMA = _schema(FIELDS)
SCHEMA["properties"]["run_id"] = {"type": "string"}  # present in a config.json read back
# Settings that change how a run is executed but not what it computes: left
# out of the run id so that, say, checkpointing more often reuses finished runs.
OPERATIONAL: dict[str, tuple[str, ...]] = {}
for _name, _field in _each():
    if _field.operational:
        _block, _key = _name.split(".")
        OPERATIONAL[_block] = (*OPERATIONAL.get(_block, ()), _key)


def fields_table() -> str:
    """The run-config fields as a Markdown table (docs/design.md)."""
    rows = ["| field | default | allowed | meaning |", "|---|---|---|---|"]
    for name, f in [*_each(), *_each(MOE_FIELDS, "model.moe.")]:
        rows.append(f"| `{name}` | `{json.dumps(f.default)}` | {_allowed(f.schema)} | {f.doc} |")
    return "\n".join(rows) + "\n"


def _allowed(schema: dict) -> str:
    if "enum" in schema:
        return ", ".join(f"`{v}`" for v in schema["enum"])
    if "anyOf" in schema:
        parts = [_allowed(s) for s in schema["anyOf"]]
        return " or ".join(p for p in parts if p)
    kind = schema.get("type")
    bounds = [
        f"{sym} {schema[k]}"
        for k, sym in (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="), ("exclusiveMaximum", "<"))
        if k in schema
    ]
    kind = " or ".join(kind) if isinstance(kind, list) else kind
    return f"{kind or ''}{' ' + ' and '.join(bounds) if bounds else ''}".strip()


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

    validate_data_config(cfg["data"])
    vocab = vocab_size_for(cfg["data"])
    if model["vocab_size"] not in (None, vocab):
        raise ConfigError(
            "model.vocab_size", f"{model['vocab_size']} does not match the tokenizer's {vocab}; leave it out"
        )
    model["vocab_size"] = vocab
    if model["d_ff"] is None:
        model["d_ff"] = 4 * model["d_model"]
    if model["d_model"] % model["n_heads"]:
        raise ConfigError("model.n_heads", f"{model['n_heads']} must divide d_model={model['d_model']}")
    moe = model["moe"]
    if moe:
        if moe["top_k"] > moe["n_experts"]:
            raise ConfigError(
                "model.moe.top_k",
                f"{moe['top_k']} is larger than n_experts={moe['n_experts']}; allowed: 1..{moe['n_experts']}",
            )
        if model["d_ff"] % moe["granularity"]:
            divisors = [g for g in range(1, model["d_ff"] + 1) if model["d_ff"] % g == 0 and g <= 64]
            raise ConfigError(
                "model.moe.granularity",
                f"{moe['granularity']} does not divide the expert width d_ff={model['d_ff']}; allowed: {divisors}",
            )
    _resolve_parametrization(model)

    if sched["warmup_steps"] is None:
        sched["warmup_steps"] = math.ceil(sched["warmup_fraction"] * steps)
    del sched["warmup_fraction"]
    if sched["warmup_steps"] >= steps:
        raise ConfigError(
            "schedule.warmup_steps", f"{sched['warmup_steps']} must be shorter than training (train.steps={steps})"
        )

    sched["multipliers"] = _resolve_multipliers(sched["multipliers"], moe is not None)
    return cfg


def _resolve_parametrization(model: dict) -> None:
    """muP settings: complete them under mup; under sp refuse them and leave
    them out (with parametrization itself), so sp configs resolve as before."""
    if model["parametrization"] == "sp":
        for key, f in PARAMETRIZATION_FIELDS.items():
            if model[key] != f.default:
                raise ConfigError(
                    f"model.{key}", "only used under model.parametrization: mup; allowed under sp: leave it out"
                )
            del model[key]
        return
    base, heads = model["base_d_model"], model["n_heads"]
    if base is None:
        raise ConfigError(
            "model.base_d_model",
            "required under model.parametrization: mup; allowed: the d_model the base lr was tuned at (an integer >= 1)",
        )
    if model["attention_mult"] is None:
        if base % heads:
            allowed = f"a multiple of n_heads={heads}"
            raise ConfigError(
                "model.base_d_model",
                f"{base} is not {allowed}: the base model keeps the heads; allowed: {allowed}, or set model.attention_mult",
            )
        model["attention_mult"] = default_attention_mult(base, heads)
    for key in ("alpha_in", "alpha_out", "attention_mult"):
        model[key] = float(model[key])
    if not model["moe"]:  # a dense model has no router: one arm table serves both
        del model["router_parametrization"]


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
        raise ConfigError(
            "schedule.multipliers.norm",
            "norm always runs at the base rate; allowed: {start: 1, end: 1} or leave it out",
        )
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
