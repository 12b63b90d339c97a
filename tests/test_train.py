"""Real training runs on the real corpus: learning, exact schedules, resume after
SIGKILL, divergence, and the run-directory contract."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
import torch
import yaml

from rlrs.config import load, resolve, run_id
from rlrs.data import load_corpus
from rlrs.schedule import lr_at
from rlrs.train import EXIT_DIVERGED, Trainer, train
from tests._train_fixtures import tiny

ROOT = Path(__file__).resolve().parents[1]


def _rlrs(*args, **kw):
    return subprocess.run(
        [sys.executable, "-m", "rlrs", *map(str, args)], capture_output=True, text=True, cwd=ROOT, **kw
    )


def _unigram_entropy(tokens: torch.Tensor, vocab: int) -> float:
    p = torch.bincount(tokens.long(), minlength=vocab).double()
    p = p[p > 0] / p.sum()
    return float(-(p * p.log()).sum())


@pytest.fixture(scope="module")
def moe_tiny_run(tmp_path_factory):
    """The README's quick-start run: examples/moe-tiny.yaml, 200 steps."""
    out = tmp_path_factory.mktemp("moe-tiny")
    proc = _rlrs("train", ROOT / "examples/moe-tiny.yaml", "--out", out)
    assert proc.returncode == 0, proc.stderr
    return out


def test_moe_tiny_learns_well_below_unigram(moe_tiny_run):
    summary = json.loads((moe_tiny_run / "summary.json").read_text())
    cfg = resolve(load(ROOT / "examples/moe-tiny.yaml"))
    corpus = load_corpus(cfg["data"])
    unigram = _unigram_entropy(corpus.val, corpus.vocab_size)
    assert summary["status"] == "completed"
    assert summary["final_eval_loss"] < unigram - 0.4, (summary["final_eval_loss"], unigram)
    assert summary["final_eval_bpb"] == pytest.approx(summary["final_eval_loss"] / math.log(2))


def test_recorded_rates_equal_the_spec_formula_at_every_step(moe_tiny_run):
    cfg = json.loads((moe_tiny_run / "config.json").read_text())
    m = pl.read_parquet(moe_tiny_run / "metrics.parquet")
    s, T = cfg["schedule"], cfg["train"]["steps"]
    assert m["step"].to_list() == list(range(T))
    comps = set(cfg["schedule"]["multipliers"])
    assert {c[3:] for c in m.columns if c.startswith("lr_")} == comps
    assert comps == {"embedding", "attention", "router", "experts", "head", "norm"}
    for comp, mult in s["multipliers"].items():
        expected = [
            lr_at(
                "cosine",
                cfg["optim"]["lr"],
                s["final_lr_fraction"],
                s["warmup_steps"],
                T,
                mult["start"],
                mult["end"],
                t,
            )
            for t in range(T)
        ]
        assert m[f"lr_{comp}"].to_list() == pytest.approx(expected, rel=1e-15, abs=0)
    # Paper MoE multipliers: embedding peaks at 5x, experts end at 1.125 * f.
    assert m["lr_embedding"].max() == pytest.approx(0.003 * 5.0)
    assert m["lr_experts"][-1] == pytest.approx(lr_at("cosine", 0.003, 0.0444, 2, 200, 0.3, 1.125, 199))
    # Update sizes on every log_interval-th step (10, counted from 1) and the last; null elsewhere.
    recorded = m.filter(pl.col("update_experts").is_not_null())
    assert recorded["step"].to_list() == list(range(9, 200, 10))
    assert (recorded["update_experts"] > 0).all() and m["update_experts"].null_count() == 180
    evaluated = m.filter(pl.col("eval_loss").is_not_null())["step"].to_list()
    assert evaluated == [49, 99, 149, 199]


def test_summary_contract(moe_tiny_run):
    s = json.loads((moe_tiny_run / "summary.json").read_text())
    for key in (
        "status",
        "final_eval_loss",
        "train_loss_last100",
        "params_total",
        "params_active",
        "params_nonembedding",
        "wall_time_s",
        "versions",
        "git_commit",
        "host",
    ):
        assert key in s
    m = pl.read_parquet(moe_tiny_run / "metrics.parquet")
    assert s["train_loss_last100"] == pytest.approx(m["train_loss"][-100:].mean())
    assert s["final_eval_loss"] == m["eval_loss"][-1]
    assert s["params_active"] < s["params_total"]
    assert not (moe_tiny_run / "checkpoint.pt").exists()
    # CPU time: the steps' share is part of the run's, and one thread cannot use more CPU than wall time
    assert 0 < s["step_cpu_time_s"] * s["steps_done"] <= s["cpu_time_s"]
    assert s["step_cpu_time_s"] <= s["step_time_s"] * 1.05


def test_completed_run_directory_is_left_alone(moe_tiny_run):
    before = {p.name: p.stat().st_mtime_ns for p in moe_tiny_run.iterdir()}
    proc = _rlrs("train", ROOT / "examples/moe-tiny.yaml", "--out", moe_tiny_run)
    assert proc.returncode == 0
    assert "nothing to do" in proc.stderr
    assert {p.name: p.stat().st_mtime_ns for p in moe_tiny_run.iterdir()} == before


def test_other_config_in_same_directory_is_refused(moe_tiny_run, tmp_path):
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump(tiny()))
    proc = _rlrs("train", other, "--out", moe_tiny_run)
    assert proc.returncode == 2
    assert "holds run" in proc.stderr


def _whole_and_killed_then_resumed(tmp_path, cfg) -> tuple[Path, Path]:
    """Train `cfg` once uninterrupted, and once SIGKILLed after its first
    checkpoint and resumed in a new process; returns both run directories."""
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))

    whole = tmp_path / "whole"
    assert _rlrs("train", path, "--out", whole).returncode == 0

    cut = tmp_path / "cut"
    proc = subprocess.Popen(
        [sys.executable, "-m", "rlrs", "train", str(path), "--out", str(cut)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 600
    while not (cut / "checkpoint.pt").exists():
        assert proc.poll() is None and time.time() < deadline, "run ended before its first checkpoint"
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (cut / "summary.json").exists(), "the run finished before it could be killed"
    killed = torch.load(cut / "checkpoint.pt", weights_only=True)
    step = killed["step"]
    assert 10 <= step < cfg["train"]["steps"]
    (tmp_path / "killed_cpu_s").write_text(repr(killed["cpu"]))

    resumed = _rlrs("train", path, "--out", cut)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming at step {step}" in resumed.stderr
    return whole, cut


@pytest.mark.parametrize("moe", [False, True], ids=["dense", "moe"])
def test_sigkill_then_resume_matches_uninterrupted(tmp_path, moe):
    whole, cut = _whole_and_killed_then_resumed(tmp_path, tiny(moe=moe, train__steps=60, train__checkpoint_interval=10))
    a = pl.read_parquet(whole / "metrics.parquet")
    b = pl.read_parquet(cut / "metrics.parquet")
    assert a.equals(b, null_equal=True)
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (whole, cut))
    assert sa["final_eval_loss"] == sb["final_eval_loss"]
    # The resumed run's CPU time adds the killed attempt's (saved in its checkpoint) to its own
    assert 0 < float((tmp_path / "killed_cpu_s").read_text()) < sb["cpu_time_s"]


# A resumed compiled run recompiles in its new process. Tolerance: every
# recorded float within 1e-6 relative of the uninterrupted compiled run (in
# practice the same generated kernels give the same bits; the tolerance
# allows for Inductor choosing other kernels in another process).
COMPILED_RESUME_RTOL = 1e-6


@pytest.mark.slow  # three torch.compile builds: ~1-3 min on an idle machine, more under load
def test_compiled_run_resumes_after_sigkill_within_tolerance(tmp_path):
    cfg = tiny(moe=True, train__steps=60, train__checkpoint_interval=10, train__compile=True)
    whole, cut = _whole_and_killed_then_resumed(tmp_path, cfg)
    a = pl.read_parquet(whole / "metrics.parquet")
    b = pl.read_parquet(cut / "metrics.parquet")
    assert a.columns == b.columns and a["step"].to_list() == b["step"].to_list() == list(range(60))
    for c in a.columns:
        x, y = a[c].to_list(), b[c].to_list()
        assert [v is None for v in x] == [v is None for v in y], c
        assert [v for v in y if v is not None] == pytest.approx(
            [v for v in x if v is not None], rel=COMPILED_RESUME_RTOL, abs=0
        ), c
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (whole, cut))
    assert sb["final_eval_loss"] == pytest.approx(sa["final_eval_loss"], rel=COMPILED_RESUME_RTOL)
    # Compiled and eager train the same model: the same first-step loss up to float rounding.
    train(tiny(moe=True, train__steps=5, train__eval_interval=5), tmp_path / "eager")
    assert a["train_loss"][0] == pytest.approx(
        pl.read_parquet(tmp_path / "eager" / "metrics.parquet")["train_loss"][0], rel=1e-5
    )


def test_divergence_ends_the_run_with_its_own_status(tmp_path):
    cfg = tiny(optim__lr=1e4, optim__grad_clip=None, train__steps=200)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "run"
    proc = _rlrs("train", path, "--out", out, timeout=300)
    assert proc.returncode == EXIT_DIVERGED, proc.stderr
    s = json.loads((out / "summary.json").read_text())
    assert s["status"] == "diverged"
    assert s["final_eval_loss"] is None
    assert "non-finite" in s["error"]
    m = pl.read_parquet(out / "metrics.parquet")
    assert len(m) == s["steps_done"] < 200
    assert not math.isfinite(m["train_loss"][-1])
    # A diverged run is a finished result: running it again does nothing.
    assert _rlrs("train", path, "--out", out).returncode == EXIT_DIVERGED


def test_in_process_api_returns_summary(tmp_path):
    s = train(tiny(train__steps=5, train__eval_interval=5), tmp_path / "r", executor="debug", job_id="42")
    assert s["status"] == "completed" and s["executor"] == "debug" and s["job_id"] == "42"
    cfg = json.loads((tmp_path / "r" / "config.json").read_text())
    assert cfg["run_id"] == s["run_id"]


@pytest.mark.parametrize("moe", [False, True], ids=["dense", "moe"])
def test_update_size_interval_changes_only_what_is_recorded(tmp_path, moe):
    """Every step's update size (interval 1) against every 7th: the same
    training, bit for bit, the same update sizes on the recorded steps (the
    7th, 14th, ... and the last), null on the others; the same run id."""
    runs = {}
    for interval in (1, 7):
        cfg = tiny(moe=moe, train__update_size_interval=interval)
        s = train(cfg, tmp_path / str(interval))
        runs[interval] = (s, pl.read_parquet(tmp_path / str(interval) / "metrics.parquet"))
    (s1, every), (s7, sparse) = runs[1], runs[7]
    assert s1["run_id"] == s7["run_id"] and s1["final_eval_loss"] == s7["final_eval_loss"]
    updates = [c for c in every.columns if c.startswith("update_")]
    assert every.columns == sparse.columns and len(updates) == (6 if moe else 5)
    assert every.drop(updates).equals(sparse.drop(updates), null_equal=True)
    assert every.select(updates).null_count().sum_horizontal().item() == 0
    recorded = [t for t in range(40) if (t + 1) % 7 == 0 or t == 39]
    assert sparse.filter(pl.col(updates[0]).is_not_null())["step"].to_list() == recorded == [6, 13, 20, 27, 34, 39]
    for c in updates:
        assert sparse[c].null_count() == 40 - len(recorded)
        assert sparse[c].gather(recorded).to_list() == every[c].gather(recorded).to_list()


def test_update_size_interval_defaults_to_the_log_interval(tmp_path):
    cfg = resolve(tiny(train__log_interval=4))
    assert cfg["train"]["update_size_interval"] is None
    assert run_id(cfg) == run_id(resolve(tiny(train__log_interval=4, train__update_size_interval=3)))
    trainer = Trainer(cfg, tmp_path, executor=None, job_id=None)
    assert [t for t in range(40) if trainer.records_update(t)] == [3, 7, 11, 15, 19, 23, 27, 31, 35, 39]


@pytest.mark.parametrize("clip", [None, 1e-3, 1.0, 1e3, "at_norm"])
def test_clipping_is_bit_identical_to_clip_grad_norm(tmp_path, clip):
    """The trainer's clip (rescale only where needed) against
    torch.nn.utils.clip_grad_norm_ (always rescales), on a real model's real
    gradients: clipped (1e-3), not clipped (1e3), no clip, and the threshold
    at the norm itself, where clip_grad_norm_'s coefficient clip / (norm + 1e-6)
    is just below 1 and it does rescale."""
    trainer = Trainer(resolve(tiny(moe=True)), tmp_path, executor=None, job_id=None)
    x, y = trainer.eval_set[0]
    _, (loss, _), _ = trainer.model(x, y)
    loss.backward()
    grads = [p.grad.clone() for p in trainer.params]
    norm = torch.nn.utils.get_total_norm(grads).item()
    max_norm = norm if clip == "at_norm" else clip
    ours = trainer._clip(max_norm)
    mine = [p.grad.clone() for p in trainer.params]
    for p, g in zip(trainer.params, grads):
        p.grad = g.clone()
    theirs = torch.nn.utils.clip_grad_norm_(
        trainer.params, max_norm if max_norm is not None else math.inf, foreach=True
    )
    assert ours.item() == theirs.item() == norm
    assert all(torch.equal(a, p.grad) for a, p in zip(mine, trainer.params))
    changed = not all(torch.equal(a, g) for a, g in zip(mine, grads))
    assert changed == (max_norm is not None and max_norm < norm + 1e-6)
    assert changed == (clip != 1e3 and clip is not None)  # the init's norm is above 1.0


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("update_size_interval", 0, "train.update_size_interval: 0 is not valid; expected integer >= 1 or null"),
        ("update_size_interval", 2.5, "train.update_size_interval: 2.5 is not valid; expected integer >= 1 or null"),
        ("compile", "yes", "train.compile: 'yes' has the wrong type; expected boolean"),
    ],
)
def test_bad_speed_settings_are_refused_by_name(field, value, expected):
    from rlrs.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        resolve(tiny(**{f"train__{field}": value}))
    assert str(e.value) == expected
