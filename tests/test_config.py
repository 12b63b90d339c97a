"""Config resolution: defaults, run ids, and bad configs refused with the field named."""

import json
import subprocess
import sys

import pytest

from rlrs.config import resolve, run_id
from rlrs.errors import ConfigError
from tests._train_fixtures import tiny


def test_resolved_config_holds_contract_keys():
    cfg = resolve(tiny(moe=True, schedule__multipliers={"experts": {"start": 0.3, "end": 1.125}}))
    assert cfg["optim"]["lr"] == 0.003
    assert cfg["schedule"]["final_lr_fraction"] == 0.0444
    assert cfg["schedule"]["warmup_steps"] == 2
    assert cfg["train"]["steps"] == 40
    m = cfg["schedule"]["multipliers"]
    # Every component the MoE has, (1, 1) where not given; no ffn in an MoE.
    assert set(m) == {"embedding", "attention", "router", "experts", "head", "norm"}
    assert m["experts"] == {"start": 0.3, "end": 1.125}
    assert m["head"] == {"start": 1.0, "end": 1.0}
    assert cfg["model"]["vocab_size"] == 256
    assert resolve(cfg) == cfg  # idempotent


def test_warmup_defaults_to_one_percent():
    cfg = tiny()
    del cfg["schedule"]["warmup_steps"]
    cfg["train"]["steps"] = 250
    assert resolve(cfg)["schedule"]["warmup_steps"] == 3  # ceil(0.01 * 250)


def test_run_id_ignores_key_order_labels_and_operational_settings():
    a = resolve(tiny())
    b = resolve(json.loads(json.dumps(tiny(), sort_keys=True)))
    assert run_id(a) == run_id(b)
    assert run_id(a) == run_id(resolve(tiny(meta={"study": "x", "arm": "y"}, train__checkpoint_interval=7)))
    assert run_id(a) != run_id(resolve(tiny(seed=1)))
    assert run_id(a) != run_id(resolve(tiny(optim__lr=0.002)))
    # Stable across processes (hash randomisation must not leak in).
    code = "import json,sys; from rlrs.config import resolve, run_id; print(run_id(resolve(json.load(sys.stdin))))"
    out = subprocess.run(
        [sys.executable, "-c", code], input=json.dumps(tiny()), capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == run_id(a)


@pytest.mark.parametrize(
    "overrides, field, allowed",
    [
        ({"schedule__multipliers": {"expert": {"start": 1, "end": 1}}}, "schedule.multipliers.expert", "experts"),
        ({"schedule__multipliers": {"norm": {"start": 2, "end": 1}}}, "schedule.multipliers.norm", "start: 1"),
        ({"schedule__multipliers": {"head": {"start": 0, "end": 1}}}, "schedule.multipliers.head.start", "> 0"),
        ({"optim__lr": -0.1}, "optim.lr", "> 0"),
        ({"optim__lr": 0}, "optim.lr", "> 0"),
        ({"schedule__warmup_steps": 40}, "schedule.warmup_steps", "train.steps=40"),
        ({"model__moe": {"n_experts": 4, "top_k": 5}}, "model.moe.top_k", "1..4"),
        ({"model__moe": {"n_experts": 4, "granularity": 3}}, "model.moe.granularity", "[1, 2, 4, 8, 16, 32, 64]"),
        ({"model__n_head": 2}, "model.n_head", "n_heads"),
        ({"trian": {}}, "trian", "train"),
        ({"train__steps": "100"}, "train.steps", "integer"),
        ({"train__steps": 1.5}, "train.steps", "integer"),
        ({"schedule__shape": "linear"}, "schedule.shape", "cosine, constant, wsd"),
        ({"train__device": "tpu"}, "train.device", "cpu, cuda, auto"),
        ({"data__tokenizer": "tiktoken"}, "data.tokenizer", "bytes, bpe"),
    ],
)
def test_bad_config_names_field_and_allowed_values(overrides, field, allowed):
    with pytest.raises(ConfigError) as err:
        resolve(tiny(**overrides))
    assert err.value.field == field
    assert allowed in str(err.value)


def test_bad_config_is_refused_before_any_file_is_written(tmp_path):
    import yaml

    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(tiny(model__moe={"n_experts": 2, "top_k": 3})))
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "rlrs", "train", str(path), "--out", str(out)], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert "model.moe.top_k" in proc.stderr
    assert not out.exists()


def test_exponent_numbers_read_as_yaml_1_2_and_json_configs_load(tmp_path):
    from rlrs.config import load

    y = tmp_path / "c.yaml"
    y.write_text('optim: {lr: 3e-3, eps: 1e-8}\nmeta: {arm: "1e3"}\n')
    raw = load(y)
    assert raw["optim"] == {"lr": 0.003, "eps": 1e-8}
    assert raw["meta"]["arm"] == "1e3"  # quoted stays a string
    # A resolved config written as JSON (RUN_DIR/config.json) reads back as it was.
    j = tmp_path / "c.json"
    j.write_text(json.dumps(resolve(tiny())))
    assert resolve(load(j)) == resolve(tiny())
