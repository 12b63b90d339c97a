"""`rlrs plan` calibrated by the finished runs (rlrs.study.calibration): real
runs trained at two of a study's sizes give those sizes' step times exactly
(the mean of their summary.json `step_cpu_time_s`, the median and quartiles
beside it; wall-clock `step_time_s` for a shape whose runs lack it), and the sizes nobody has run the FLOP model times the factor
those runs give; each line says which."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

from rlrs import rundir
from rlrs.model import train_flops_per_token
from rlrs.study import calibration as C
from rlrs.study import check_study, load_study, make_plan

from _cli_fixtures import cli_plan

STUDY = {
    "study": "cal",
    "executor": {"kind": "local", "timeout_min": 5},
    "defaults": {
        "model": {"seq_len": 32},
        "optim": {"lr": 0.01},
        "data": {"eval_tokens": 1024},
        "train": {"steps": 30, "batch_size": 4, "eval_interval": 10, "threads": 1},
    },
    "sizes": {
        "tiny": {"d_model": 16, "n_layers": 1, "n_heads": 2},
        "small": {"d_model": 24, "n_layers": 1, "n_heads": 2},
        "wide": {"d_model": 32, "n_layers": 2, "n_heads": 2},  # never run
        "moe": {"d_model": 16, "n_layers": 1, "n_heads": 2, "moe": {"n_experts": 4, "top_k": 1}},  # never run
    },
    "arms": {"baseline": {}},
    "seeds": [0, 1, 2, 3],
    "sweeps": {"main": {}},
}


def _config(plan, size: str, seed: int) -> tuple[str, dict]:
    return next((r, c) for r, c in plan.configs.items() if c["meta"]["size"] == size and c["seed"] == seed)


@pytest.fixture(scope="module")
def half_run(tmp_path_factory):
    """The study with tiny's seeds 0-2 and small's seed 0 trained for real
    (tiny's seed 3, small's seeds 1-3, wide and moe not), and a reused copy
    of one tiny run in another study, which must not count twice."""
    from rlrs.train import train

    work = tmp_path_factory.mktemp("calibration")
    path = work / "cal.yaml"
    path.write_text(yaml.safe_dump(STUDY))
    plan = make_plan(check_study(load_study(path)), path)
    runs = work / "results" / "cal" / "runs"
    summaries = {}
    for size, seed in (("tiny", 0), ("tiny", 1), ("tiny", 2), ("small", 0)):
        rid, cfg = _config(plan, size, seed)
        summaries[size, seed] = train(cfg, runs / rid, executor="debug")
        assert summaries[size, seed]["status"] == "completed"
    rid, _ = _config(plan, "tiny", 0)
    copy = work / "results" / "other" / "runs" / rid
    shutil.copytree(runs / rid, copy)
    (copy / rundir.REUSED).write_text(json.dumps({"from_study": "cal", "from_run_dir": f"cal/runs/{rid}"}))
    return work, path, plan, summaries


def _expected_seconds(cfg: dict, step_s: float) -> float:
    """RUN_START + steps x step time + the evaluations at the FLOP model's time x the same factor."""
    t, m = cfg["train"], cfg["model"]
    per_token = train_flops_per_token(m)
    model_step = C.CPU_STEP_OVERHEAD_S + t["batch_size"] * m["seq_len"] * per_token / C.CPU_FLOPS_PER_THREAD
    n_evals = t["steps"] // t["eval_interval"] + (t["steps"] % t["eval_interval"] != 0)
    eval_model = n_evals * cfg["data"]["eval_tokens"] * per_token / 3 / C.CPU_FLOPS_PER_THREAD
    return C.RUN_START_S + t["steps"] * step_s + eval_model * step_s / model_step


def test_finished_sizes_use_their_measured_step_time_and_the_rest_the_fitted_factor(half_run, monkeypatch):
    from rlrs.study.estimate import estimate

    work, path, plan, summaries = half_run
    monkeypatch.setenv("RLRS_RESULTS", str(work / "results"))
    est = estimate(load_study(path), path)
    assert est.calibration.runs == 4  # the reused copy is its original's measurement, not a fifth
    x0, x1, x2 = sorted(summaries["tiny", s]["step_cpu_time_s"] for s in (0, 1, 2))
    t_small = summaries["small", 0]["step_cpu_time_s"]
    # tiny: the mean of 3, their median, their quartiles (inclusive: halfway to the neighbours)
    stats = {"tiny": ((x0 + x1 + x2) / 3, x1, x0 + (x1 - x0) / 2, x1 + (x2 - x1) / 2), "small": (t_small,) * 4}
    models = {}
    for size, (mean, med, q1, q3) in stats.items():
        for seed in (0, 1, 2, 3):  # the unfinished seeds too: the same shape
            rid, cfg = _config(plan, size, seed)
            cost, step = est.costs[rid], est.costs[rid]["step"]
            assert step.source == C.MEASURED and step.runs == (3 if size == "tiny" else 1)
            assert (step.seconds, step.median, step.low, step.high) == pytest.approx((mean, med, q1, q3), rel=1e-12)
            for k, v in (("seconds", mean), ("median", med), ("low", q1), ("high", q3)):
                assert cost[k] == pytest.approx(_expected_seconds(cfg, v), rel=1e-12), k
        models[size] = C.model_step_seconds(cfg)
    # The factor: the median of the shapes' mean / modelled (of two: halfway); its median-based twin
    # the same of their medians; its spread the lowest and highest quartile / modelled over them.
    ratio = {s: stats[s][0] / models[s] for s in stats}
    factor = (ratio["tiny"] + ratio["small"]) / 2
    median = (stats["tiny"][1] / models["tiny"] + ratio["small"]) / 2
    low = min(stats["tiny"][2] / models["tiny"], ratio["small"])
    high = max(stats["tiny"][3] / models["tiny"], ratio["small"])
    for size, basis in (("wide", "dense runs of cal"), ("moe", "runs of cal")):  # no MoE run: both families'
        rid, cfg = _config(plan, size, 0)
        step, model = est.costs[rid]["step"], C.model_step_seconds(cfg)
        assert step.source == C.FACTOR and step.of.basis == basis and step.runs == 4
        assert step.factor == pytest.approx(factor, rel=1e-12)
        assert (step.seconds, step.median, step.low, step.high) == pytest.approx(
            (model * factor, model * median, model * low, model * high), rel=1e-12
        )
        assert est.costs[rid]["seconds"] == pytest.approx(_expected_seconds(cfg, step.seconds), rel=1e-12)
    assert est.seconds("cpu") == pytest.approx(sum(c["seconds"] for c in est.costs.values()), rel=1e-12)


def test_plan_says_what_each_estimate_rests_on(half_run, monkeypatch, capsys):
    from rlrs.study.estimate import estimate, fmt_seconds

    work, path, plan, _ = half_run
    monkeypatch.setenv("RLRS_RESULTS", str(work / "results"))
    assert cli_plan(path) == 0
    lines = capsys.readouterr().out.splitlines()
    est = estimate(load_study(path), path)
    by_size = {s: next(x for x in lines if x.startswith(f"  {s} ")) for s in STUDY["sizes"]}
    assert "measured on 3 runs (CPU time; mean; median " in by_size["tiny"] and "  4 " in by_size["tiny"]
    assert by_size["small"].endswith("measured on 1 run (CPU time; mean)")
    factor = est.costs[_config(plan, "wide", 0)[0]]["step"].factor
    assert by_size["wide"].endswith(f"x {factor:.2f} (the factor of dense runs of cal)")
    assert by_size["moe"].endswith(f"x {factor:.2f} (the factor of runs of cal)")
    assert f"calibration: 4 finished runs of 2 shapes under {work / 'results'}/" in "\n".join(lines)
    assert any(
        x.startswith(f"  used: dense runs of cal: x{factor:.2f} at the mean") and "2 shapes, 4 runs)" in x
        for x in lines
    )
    cpu = next(x for x in lines if x.startswith("estimated CPU time: "))
    median, low, high = est.spread("cpu")
    assert cpu.startswith(f"estimated CPU time: {fmt_seconds(est.seconds('cpu'))} of one-thread runs")
    assert f"(at mean step times; {fmt_seconds(median)} at their medians, " in cpu
    assert f", {fmt_seconds(low)} to {fmt_seconds(high)} at their quartiles; " in cpu


def test_a_shape_rests_on_its_cpu_timed_runs_else_on_wall_clock(half_run, tmp_path):
    # Runs from before CPU time was recorded: tiny's seed 2 and small's only run lose step_cpu_time_s.
    work, _, plan, summaries = half_run
    shutil.copytree(work / "results", tmp_path / "results")
    runs = tmp_path / "results" / "cal" / "runs"
    for size, seed in (("tiny", 2), ("small", 0)):
        path = runs / _config(plan, size, seed)[0] / rundir.SUMMARY
        doc = json.loads(path.read_text())
        del doc["step_cpu_time_s"]
        path.write_text(json.dumps(doc))
    cal = C.load(tmp_path / "results")
    tiny, small = (C.shape(_config(plan, size, 0)[1]) for size in ("tiny", "small"))
    assert sorted(cal.times(tiny)) == sorted(summaries["tiny", s]["step_cpu_time_s"] for s in (0, 1))
    assert cal.times(small) == [summaries["small", 0]["step_time_s"]]
    assert cal.cpu_timed == {tiny}
    model = C.model_step_seconds(_config(plan, "small", 0)[1])
    assert not cal.step_time(small, model).cpu_time and cal.step_time(tiny, model).cpu_time


def test_without_finished_runs_the_plan_is_the_flop_model_and_says_so(tmp_path, monkeypatch, capsys):
    from rlrs.study.estimate import estimate

    monkeypatch.setenv("RLRS_RESULTS", str(tmp_path / "results"))
    path = tmp_path / "cal.yaml"
    path.write_text(yaml.safe_dump(STUDY))
    assert cli_plan(path) == 0
    out = capsys.readouterr().out
    assert out.count("FLOP model only (no finished run to calibrate on)") == len(STUDY["sizes"])
    assert f"calibration: no finished runs under {tmp_path / 'results'}/: the FLOP model alone" in out
    assert "(assumes 50 GFLOP/s per thread + 10 ms/step + 2 s/run; an estimate)" in out
    est = estimate(load_study(path), path)
    for rid, cfg in est.plan.configs.items():
        assert est.costs[rid]["seconds"] == pytest.approx(_expected_seconds(cfg, C.model_step_seconds(cfg)), rel=1e-12)


def test_shape_ignores_what_does_not_change_a_step_and_fills_old_configs_defaults():
    plan = make_plan(check_study(STUDY))
    _, cfg = _config(plan, "tiny", 0)
    other = json.loads(json.dumps(cfg))
    other["optim"]["lr"], other["seed"], other["model"]["init_scale"] = 0.5, 7, 1.0
    del other["train"]["compile"]  # a run from before the field existed ran uncompiled
    assert C.shape(other) == C.shape(cfg)
    other["train"]["batch_size"] = 8
    assert C.shape(other) != C.shape(cfg)
    assert C.family(C.shape(_config(plan, "moe", 0)[1])) == "moe" and C.family(C.shape(cfg)) == "dense"
