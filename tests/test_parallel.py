"""Data-parallel training with real processes: submitit's local executor
with `tasks_per_node: 2`, gloo on CPU, real training on the real corpus.

A run's result does not depend on how many processes train it: the same
per-step train loss, eval loss and per-component rates as one process with
the same global batch (and micro-batch, the MoE dispatch group)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
import torch

from rlrs.config import ConfigError, resolve, run_id
from rlrs.executor import check_world
from rlrs.launch import submit
from tests._train_fixtures import tiny

REL = 1e-5  # the bound; measured maxima are printed (pytest -s) and stay far below
SHORT = dict(train__steps=12, train__eval_interval=6, train__checkpoint_interval=4, train__batch_size=8)


def _settings(tasks: int) -> dict:
    return {"kind": "local", "timeout_min": 5, "runs_per_job": 1, "tasks_per_node": tasks, "nodes": 1}


def _train(root: Path, cfg: dict, tasks: int) -> tuple[pl.DataFrame, dict]:
    """Train `cfg` in root/<run id> with `tasks` processes through rlrs.launch."""
    cfg = resolve(cfg)
    rid = run_id(cfg)
    assert submit([root / rid], {rid: cfg}, _settings(tasks), "local") == 0
    out = root / rid
    return pl.read_parquet(out / "metrics.parquet"), json.loads((out / "summary.json").read_text())


def _max_rel(a: pl.DataFrame, b: pl.DataFrame, column: str) -> float:
    pairs = [(x, y) for x, y in zip(a[column].to_list(), b[column].to_list()) if x is not None or y is not None]
    assert all(x is not None and y is not None for x, y in pairs), column
    return max((abs(x - y) / abs(x) for x, y in pairs), default=0.0)


def _assert_same_run(a: pl.DataFrame, b: pl.DataFrame, sa: dict, sb: dict, what: str) -> None:
    assert a.columns == b.columns and a.height == b.height == sa["steps_done"]
    assert a["step"].equals(b["step"]) and a["tokens"].equals(b["tokens"])
    for c in [c for c in a.columns if c.startswith("lr_")]:
        assert a[c].equals(b[c]), c  # the schedules: exactly the same rates
    rel = {c: _max_rel(a, b, c) for c in ("train_loss", "eval_loss", "grad_norm", "lb_loss", "z_loss")}
    rel["final_eval_loss"] = abs(sa["final_eval_loss"] - sb["final_eval_loss"]) / sa["final_eval_loss"]
    rel["update"] = max(_max_rel(a, b, c) for c in a.columns if c.startswith("update_"))
    print(f"\n{what}: max relative difference {json.dumps(rel)}")
    assert rel["train_loss"] < REL and rel["eval_loss"] < REL and rel["final_eval_loss"] < REL
    assert rel["grad_norm"] < REL and rel["lb_loss"] < REL and rel["z_loss"] < REL
    assert rel["update"] < REL  # ||W_after - W_before|| / ||W||, on the steps that record it


MUP = {"model__parametrization": "mup", "model__base_d_model": 16, "model__router_parametrization": "mup"}


@pytest.mark.parametrize(("moe", "extra"), [(False, {}), (True, {}), (True, MUP)], ids=["dense", "moe", "moe-mup"])
def test_two_processes_train_the_same_run_as_one(tmp_path, moe, extra):
    # MoE: the dispatch group (capacity, aux losses) is the micro-batch, set
    # explicitly; the one-process run splits its batch into the same groups.
    # muP: its parameter groups and multipliers apply identically on every process.
    cfg = tiny(moe=moe, **SHORT, **extra, **({"train__micro_batch_size": 4} if moe else {}))
    a, sa = _train(tmp_path / "one", cfg, 1)
    b, sb = _train(tmp_path / "two", {**cfg, "train": {**cfg["train"], "parallel": "ddp"}}, 2)
    assert sa["run_id"] == sb["run_id"]  # the world size and the parallel mode are not in the run id
    _assert_same_run(a, b, sa, sb, f"{'moe' if moe else 'dense'}{' mup' if extra else ''} 1 vs 2 processes")
    # Only rank 0 wrote the run directory; the other process wrote nothing there.
    run = tmp_path / "two" / sb["run_id"]
    assert sorted(p.name for p in run.iterdir()) == ["config.json", "metrics.parquet", "submitit", "summary.json"]


@pytest.mark.parametrize("moe", [False, True], ids=["dense", "moe"])
def test_gradient_accumulation_on_two_processes(tmp_path, moe):
    # Micro-batch 2 = half the per-rank batch of 4: two backward passes per step per process.
    cfg = tiny(moe=moe, **SHORT, train__micro_batch_size=2)
    a, sa = _train(tmp_path / "one", cfg, 1)
    b, sb = _train(tmp_path / "two", {**cfg, "train": {**cfg["train"], "parallel": "ddp"}}, 2)
    _assert_same_run(a, b, sa, sb, f"{'moe' if moe else 'dense'} accumulation 1 vs 2 processes")
    if not moe:  # dense: accumulating micro-batches computes the whole batch's step
        c, sc = _train(tmp_path / "whole", tiny(**SHORT), 1)
        _assert_same_run(c, b, sc, sb, "dense one batch of 8 vs 2 processes x 2 micro-batches of 2")


def test_an_moe_micro_batch_is_its_dispatch_group(tmp_path):
    # The micro-batch is in the run id: it changes what an MoE run computes.
    whole, halves = (resolve(tiny(moe=True, **SHORT, train__micro_batch_size=m)) for m in (None, 4))
    assert run_id(whole) != run_id(halves)
    # At its default (null) the field leaves the run id as it was before it existed.
    assert run_id(resolve(tiny(moe=True, **SHORT))) == run_id(whole)


def _children(pid: int) -> list[int]:
    kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(k) for k in kids] + [g for k in kids for g in _children(int(k))]


def test_two_process_run_killed_and_resumed_ends_as_the_uninterrupted_one(tmp_path):
    cfg = tiny(moe=True, **SHORT, train__micro_batch_size=2, train__parallel="ddp")
    cfg["train"].update(steps=24, checkpoint_interval=6)
    whole, sw = _train(tmp_path / "whole", cfg, 2)

    cfg = resolve(cfg)
    rid = run_id(cfg)
    cut = tmp_path / "cut" / rid
    script = (
        "import json, sys; from pathlib import Path; from rlrs.launch import submit; "
        "cfg, settings = json.loads(sys.argv[1]), json.loads(sys.argv[2]); "
        f"sys.exit(submit([Path(sys.argv[3])], {{{rid!r}: cfg}}, settings, 'local'))"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script, json.dumps(cfg), json.dumps(_settings(2)), str(cut)],
        cwd=Path(__file__).resolve().parent.parent,
    )
    deadline = time.time() + 120
    while not (cut / "checkpoint.pt").exists():
        assert parent.poll() is None and time.time() < deadline, "run ended before its first checkpoint"
        time.sleep(0.005)
    # SIGKILL the whole job: both training processes, submitit's controller and the submitter.
    controller = int(json.loads((cut / "submitted.json").read_text())["job_id"])
    for pid in [*_children(controller), controller, parent.pid]:
        os.kill(pid, signal.SIGKILL)
    parent.wait()
    assert not (cut / "summary.json").exists(), "the run finished before it could be killed"
    step = torch.load(cut / "checkpoint.pt", weights_only=True)["step"]
    assert 6 <= step < 24

    # The checkpoint holds the full state: it resumes at any world size (here also on one process).
    one = tmp_path / "one" / rid
    one.mkdir(parents=True)
    for name in ("config.json", "checkpoint.pt"):
        shutil.copy(cut / name, one / name)

    assert submit([cut], {rid: cfg}, _settings(2), "local") == 0
    resumed = pl.read_parquet(cut / "metrics.parquet")
    assert whole.equals(resumed, null_equal=True)  # every column of every step, exactly
    sc = json.loads((cut / "summary.json").read_text())
    assert sc["final_eval_loss"] == sw["final_eval_loss"] and sc["steps_done"] == 24

    assert submit([one], {rid: cfg}, _settings(1), "local") == 0
    on_one = pl.read_parquet(one / "metrics.parquet")
    _assert_same_run(whole, on_one, sw, json.loads((one / "summary.json").read_text()), "moe resumed on 1 of 2")


@pytest.mark.parametrize(
    ("overrides", "tasks", "field"),
    [
        ({"train__parallel": "none"}, 2, "train.parallel"),
        ({"train__parallel": "ddp", "train__batch_size": 9}, 2, "train.batch_size"),
        ({"train__parallel": "ddp", "train__micro_batch_size": 8}, 2, "train.micro_batch_size"),
        ({"train__parallel": "ddp", "model__moe": {"n_experts": 4}}, 2, "train.micro_batch_size"),
    ],
    ids=["parallel-none", "batch-indivisible", "micro-too-big", "moe-without-micro"],
)
def test_settings_two_processes_cannot_train_are_refused_before_any_job(tmp_path, overrides, tasks, field):
    cfg = resolve(tiny(**{**SHORT, **overrides}))
    with pytest.raises(ConfigError) as e:
        check_world(cfg, tasks)
    assert e.value.field == field
    rid = run_id(cfg)
    with pytest.raises(ConfigError):
        submit([tmp_path / rid], {rid: cfg}, _settings(tasks), "local")
    assert not (tmp_path / rid).exists()  # no job, no run directory


@pytest.mark.parametrize(
    ("overrides", "field", "says"),
    [
        ({"train__parallel": "fsdp"}, "train.parallel", "allowed: none, ddp"),
        ({"train__micro_batch_size": 3}, "train.micro_batch_size", "does not divide train.batch_size=8"),
    ],
)
def test_run_configs_refused_by_name(overrides, field, says):
    with pytest.raises(ConfigError) as e:
        resolve(tiny(**{**SHORT, **overrides}))
    assert e.value.field == field and says in str(e.value)


def test_job_shapes_an_executor_cannot_run_are_refused(tmp_path):
    cfg = resolve(tiny(**SHORT, train__parallel="ddp"))
    rid = run_id(cfg)
    with pytest.raises(ConfigError, match="executor.nodes"):
        submit([tmp_path / rid], {rid: cfg}, {**_settings(1), "nodes": 2}, "local")
    with pytest.raises(ConfigError, match="executor.tasks_per_node"):
        submit([tmp_path / rid], {rid: cfg}, _settings(2), "debug")
    gpu = resolve(tiny(**SHORT, train__parallel="ddp", train__device="cuda"))
    slurm = {**_settings(4), "kind": "slurm", "slurm": {"gpus_per_node": 2}}
    with pytest.raises(ConfigError, match="executor.slurm.gpus_per_node: 2 GPUs for 4 processes per node"):
        submit([tmp_path / run_id(gpu)], {run_id(gpu): gpu}, slurm, "slurm")
    assert not any(tmp_path.iterdir())  # refused before any job or run directory
