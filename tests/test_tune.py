"""The tuner for real: greedy local searches that train real (tiny) runs on
the Austen corpus, resume from their run directories, land in a real DuckDB
file, and transfer through the real Snakefile.

Most searches use the `debug` executor (in-process, ~0.1 s per tiny run);
the SIGKILL test and the end-to-end test go through `rlrs tune` and
submitit's local executor, as a user would."""

from __future__ import annotations

import copy
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest
import yaml
from test_workflow import user_env

from rlrs import tune as T
from rlrs.errors import ConfigError
from rlrs.study import check_study, load_study, make_plan, tuned_plan, write_plan
from rlrs.study import searches as S
from rlrs.tunables import rounded

from _cli_fixtures import cli_collect, cli_plan, cli_status

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "workflow" / "configs"
BIN = Path(sys.executable).parent

# Two dense sizes (the larger one 27x the non-embedding parameters: width x3,
# depth x3), 30-step runs, a 4-parameter search space per arm.
TINY = {
    "study": "tinytune",
    "executor": {"kind": "debug", "timeout_min": 5},
    "defaults": {
        "model": {"seq_len": 32, "init_scale": 0.15},
        "optim": {"lr": 0.003},
        "schedule": {"warmup_fraction": 0.05, "final_lr_fraction": 0.0444},
        "data": {"corpus": "austen", "tokenizer": "bytes", "eval_tokens": 2048},
        "train": {"steps": 30, "batch_size": 8, "eval_interval": 10, "checkpoint_interval": 10, "log_interval": 5},
    },
    "sizes": {"s": {"d_model": 16, "n_layers": 1, "n_heads": 2}, "l": {"d_model": 48, "n_layers": 3, "n_heads": 2}},
    "arms": {"baseline": {}, "rlrs": {"multipliers": {"embedding": {"start": 5.0, "end": 0.667}}}},
    "seeds": [0, 1],
    "sweeps": {"ladder": {"arm": "baseline", "factors": [0.5]}, "lr": {"sizes": ["l"], "factors": [0.5]}},
    "tune": {
        "sizes": ["s"],
        "arms": {"baseline": "global", "rlrs": "relative"},
        "max_passes": 2,
        "max_runs": 13,
        "parameters": ["lr", "init_scale", "embedding.start", "head.end"],
    },
}


def tiny(**tune) -> dict:
    study = copy.deepcopy(TINY)
    study["tune"].update(tune)
    return study


def quiet(_msg: str) -> None:
    pass


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    """An uninterrupted search of both arms with the full budget (13 runs each)."""
    root = tmp_path_factory.mktemp("full")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RLRS_RESULTS", str(root))
        t0 = time.perf_counter()
        docs = T.tune(check_study(tiny()), log=quiet)
        seconds = time.perf_counter() - t0
    return {"root": root / "tinytune", "docs": {d["arm"]: d for d in docs}, "seconds": seconds}


def batches(trajectory: list[dict]) -> list[list[dict]]:
    """The trajectory's rows grouped by launch: the start run, then one batch per parameter visit."""
    out: list[list[dict]] = []
    for row in trajectory:
        if out and (row["pass"], row["parameter"]) == (out[-1][0]["pass"], out[-1][0]["parameter"]):
            out[-1].append(row)
        else:
            out.append([row])
    return out


def test_a_local_batch_runs_at_most_one_job_per_core(tmp_path, monkeypatch):
    # One visit of one parameter: the start run, then 4 candidates through the local executor, which
    # groups them into one job per core (a job keeps its pickles in its first run's directory).
    monkeypatch.setenv("RLRS_RESULTS", str(tmp_path))
    study = tiny(parameters=["lr"], max_passes=1, max_runs=5, arms={"baseline": "global"})
    study["executor"]["kind"] = "local"
    (doc,) = T.tune(check_study(study), log=quiet, cores=2)
    start, batch = batches(doc["trajectory"])
    runs = tmp_path / "tinytune" / "runs"
    assert len(batch) == 4 and all((runs / r["run_id"] / "summary.json").exists() for r in batch)
    assert sum((runs / r["run_id"] / "submitit").is_dir() for r in batch) == 2


def test_a_local_batch_deals_its_runs_so_that_the_jobs_end_together(tmp_path, monkeypatch):
    # Consecutive chunks of a selection round put one family's runs in each job, and one core idles
    # while the other trains the larger ones. The runs are dealt longest first (the plan's step time
    # estimate: here, with nothing finished, the FLOP model) to the least loaded job with room.
    monkeypatch.setenv("RLRS_RESULTS", str(tmp_path))
    from rlrs.config import resolve, run_id
    from rlrs.launch import balanced_groups
    from rlrs.study.calibration import model_step_seconds

    def cfg(d_model, n_layers, seed):
        c = resolve(
            {"model": {"d_model": d_model, "n_layers": n_layers, "n_heads": 2}, "train": {"steps": 100}, "seed": seed}
        )
        return run_id(c), c

    made = [cfg(64, 4, 0), cfg(64, 4, 1), cfg(32, 2, 0), cfg(16, 1, 0), cfg(16, 1, 1)]
    configs = dict(made)
    dirs = [tmp_path / rid for rid, _ in made]
    big0, big1, mid, small0, small1 = dirs
    groups = balanced_groups(dirs, configs, 2)
    assert groups == [[big0, small1], [big1], [mid, small0]]  # at most 2 a job, the caller's order kept
    seconds = {d: model_step_seconds(configs[d.name]) for d in dirs}
    assert seconds[big0] > seconds[mid] > seconds[small0]
    assert balanced_groups(dirs, configs, 1) == [[d] for d in dirs]
    assert balanced_groups(dirs, configs, 5) == [dirs]


# ------------------------------------------------------------------ the search rule


@pytest.mark.parametrize("arm", ["baseline", "rlrs"])
def test_search_follows_the_greedy_rule(full, arm):
    doc = full["docs"][arm]
    search = next(s for s in S.searches(check_study(tiny())) if s.arm == arm)
    runs = full["root"] / "runs"
    assert doc["status"] == "done" and doc["digest"] == search.digest()
    assert search.parameters == (
        ["lr", "init_scale"] if arm == "baseline" else ["lr", "init_scale", "embedding.start", "head.end"]
    )
    start, *rest = batches(doc["trajectory"])
    assert start[0]["accepted"] and start[0]["run_id"] == search.candidate(search.start)[0]
    best, current, seen = start[0]["score"], dict(search.start), {start[0]["run_id"]}
    visits = []
    for batch in rest:
        p, name = batch[0]["pass"], batch[0]["parameter"]
        visits.append((p, name))
        assert [r["factor"] for r in batch] == search.factors  # all four factors, in parallel
        assert [r["value"] for r in batch] == [rounded(current[name] * f) for f in search.factors]
        for r in batch:  # every score is the run's own summary.json field
            summary = json.loads((runs / r["run_id"] / "summary.json").read_text())
            assert r["score"] == summary["train_loss_last100"]
            assert r["run_id"] == search.candidate({**current, name: r["value"]})[0]
        seen |= {r["run_id"] for r in batch}
        top = min(batch, key=lambda r: r["score"])
        accepted = [r for r in batch if r["accepted"]]
        if top["score"] < best:  # accepted only when better than the best so far
            assert accepted == [top]
            best, current[name] = top["score"], top["value"]
        else:
            assert accepted == []
        assert all(r["best_score"] == best and r["runs_spent"] == len(seen) for r in batch)
    # Budget: the next batch would have exceeded 13 distinct runs.
    assert doc["stop_reason"] == "max_runs" and doc["runs_spent"] == len(seen) <= 13 < len(seen) + 4
    assert doc["final"] == current and doc["best_score"] == best
    assert doc["best_run_id"] == search.candidate(current)[0]
    # Each pass visits the parameters in the seeded order.
    for p in {p for p, _ in visits}:
        order = list(search.parameters)
        random.Random(f"0-s-{arm}-{p}").shuffle(order)
        done = [n for q, n in visits if q == p]
        assert done == order[: len(done)]


def test_search_stops_after_a_pass_without_improvement(tmp_path, monkeypatch):
    """A parameter at 0 (no weight decay): every factor gives the start run
    back, nothing improves, and the search stops after its first pass."""
    monkeypatch.setenv("RLRS_RESULTS", str(tmp_path))
    study = tiny(arms={"baseline": "global"}, parameters=["weight_decay"], max_passes=3)
    del study["tune"]["max_runs"]
    study["defaults"]["optim"]["weight_decay"] = 0.0  # every candidate is the start run itself
    (doc,) = T.tune(check_study(study), log=quiet)
    assert doc["stop_reason"] == "converged" and doc["passes"] == 1
    assert doc["runs_spent"] == 1  # x0.2 .. x5 of 0 is 0: the same run, never trained twice
    assert [r["accepted"] for r in doc["trajectory"]] == [True, False, False, False, False]
    assert len(list((tmp_path / "tinytune" / "runs").iterdir())) == 1


def test_a_diverged_candidate_is_recorded_and_never_accepted(tmp_path, monkeypatch):
    monkeypatch.setenv("RLRS_RESULTS", str(tmp_path))
    study = tiny(arms={"baseline": "global"}, parameters=["lr"], max_runs=5)
    study["defaults"]["optim"]["lr"] = 10.0  # trains (badly); x5 = 50 goes non-finite
    (doc,) = T.tune(check_study(study), log=quiet)
    start, *batch = doc["trajectory"]
    assert [r["status"] for r in batch] == ["completed", "completed", "completed", "diverged"]
    assert batch[-1]["score"] is None and not batch[-1]["accepted"]
    best = min(batch[:3], key=lambda r: r["score"])
    assert best["score"] < start["score"] and best["accepted"] and doc["final"] == {"lr": best["value"]}


# ------------------------------------------------------------------ resume


def test_a_resumed_search_reaches_the_same_result(full, tmp_path, monkeypatch):
    monkeypatch.setenv("RLRS_RESULTS", str(tmp_path))
    runs = tmp_path / "tinytune" / "runs"
    first = {d["arm"]: d for d in T.tune(check_study(tiny(max_runs=7)), log=quiet)}
    assert {d["runs_spent"] for d in first.values()} == {5}  # start + one batch: the budget stops it midway
    started = {d.name: json.loads((d / "summary.json").read_text())["started_at"] for d in runs.iterdir()}
    again = {d["arm"]: d for d in T.tune(check_study(tiny()), log=quiet)}
    # Same result as the uninterrupted search: same decisions, same runs, same scores.
    assert again == full["docs"]
    # Every run of the first call was reused, not retrained.
    for rid, when in started.items():
        assert json.loads((runs / rid / "summary.json").read_text())["started_at"] == when
    # A third call finds the results done and trains nothing.
    before = sorted(p.name for p in runs.iterdir())
    assert T.tune(check_study(tiny()), log=quiet) == [full["docs"]["baseline"], full["docs"]["rlrs"]]
    assert sorted(p.name for p in runs.iterdir()) == before


def test_sigkill_mid_search_then_rerun(full, tmp_path):
    """`rlrs tune` through submitit's local executor, killed with SIGKILL
    (process group: the job processes too, as in a machine crash) while a
    batch is in flight, then run again to the end."""
    study = tiny(arms={"baseline": "global"}, max_runs=9)
    study["executor"]["kind"] = "local"
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    env = user_env(RLRS_RESULTS=str(tmp_path / "results"))  # no rlrs, no snakemake on PATH
    cmd = [str(BIN / "rlrs"), "tune", str(path), "--search-only"]
    runs = tmp_path / "results" / "tinytune" / "runs"
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 120

    def second_batch_in_flight() -> bool:  # the start run and the first batch done, the second submitted
        in_flight = [m for m in runs.glob("*/submitted.json") if not (m.parent / "summary.json").exists()]
        return len(list(runs.glob("*/summary.json"))) >= 5 and bool(in_flight)

    while not second_batch_in_flight():
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read().decode()
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = len(list(runs.glob("*/summary.json")))
    assert 5 <= killed_at < 9
    doc_path = tmp_path / "results" / "tinytune" / "tune" / "s.baseline.json"
    assert json.loads(doc_path.read_text())["status"] == "running"  # the progress record, written atomically
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stdout + out.stderr
    doc = json.loads(doc_path.read_text())
    reference = full["docs"]["baseline"]
    # The first 9 runs of the uninterrupted search (its digest differs: max_runs 13).
    assert doc["trajectory"] == reference["trajectory"][:9]
    assert doc["status"] == "done" and doc["runs_spent"] == 9
    assert len(list(runs.glob("*/summary.json"))) == 9


def test_only_one_search_per_study_at_a_time(tmp_path, monkeypatch):
    monkeypatch.setenv("RLRS_RESULTS", str(tmp_path))
    with T.Lock(tmp_path / "tinytune" / "tune" / ".lock"):
        with pytest.raises(T.TuneError, match="another `rlrs tune` holds"):
            T.tune(check_study(tiny()), log=quiet)
    assert not (tmp_path / "tinytune" / "runs").exists()  # refused before training anything


# ------------------------------------------------------------------ database and transfer


def test_trajectory_and_tuned_settings_land_in_duckdb(full, tmp_path, monkeypatch):
    monkeypatch.setenv("RLRS_RESULTS", str(full["root"].parent))
    study = check_study(tiny())
    plan = tuned_plan(study)
    plan_path = full["root"] / "plan.json"
    write_plan(plan, plan_path)
    db = tmp_path / "rlrs.duckdb"
    # Only the search runs exist: the transfer runs are planned, not trained here.
    tune_runs = sorted({r["run_id"] for r in plan.runs if r["sweep"] == "tune"})
    assert cli_collect(db, [full["root"] / "runs" / rid for rid in tune_runs], plan=plan_path) == 0
    con = duckdb.connect(str(db), read_only=True)
    try:
        for arm, doc in full["docs"].items():
            rows = con.execute(
                "SELECT step, pass, parameter, value, factor, run_id, score, accepted, best_score, runs_spent "
                "FROM tune_trajectory WHERE study = 'tinytune' AND arm = ? ORDER BY step",
                [arm],
            ).fetchall()
            keys = (
                "step",
                "pass",
                "parameter",
                "value",
                "factor",
                "run_id",
                "score",
                "accepted",
                "best_score",
                "runs_spent",
            )
            assert rows == [tuple(r[k] for k in keys) for r in doc["trajectory"]]
            tuned = dict(con.execute("SELECT parameter, value FROM tuned WHERE arm = ?", [arm]).fetchall())
            assert tuned == doc["final"]
        # The search runs are ordinary runs of the study, planned under sweep `tune`.
        assert con.execute("SELECT count(DISTINCT run_id) FROM plan WHERE sweep = 'tune'").fetchall() == [
            (len(tune_runs),)
        ]
        assert con.execute("SELECT count(*) FROM runs").fetchall() == [(len(tune_runs),)]
        paper = con.execute(
            "SELECT paper_value FROM tuned_settings WHERE arm = 'rlrs' AND parameter = 'embedding.start'"
        ).fetchall()
        assert paper == [(5.0,)]  # the paper's dense table beside the tuned value
    finally:
        con.close()


def test_transfer_applies_the_tuned_settings_at_every_size(full, tmp_path, monkeypatch):
    study = check_study(tiny())
    # Before tuning: the family's sizes wait for the search; the pure expansion is untouched.
    monkeypatch.setenv("RLRS_RESULTS", str(tmp_path))
    assert tuned_plan(study).runs == []
    assert {c["optim"]["lr"] for c in make_plan(study).configs.values()} == {0.003, 0.0015}  # the file's own settings
    monkeypatch.setenv("RLRS_RESULTS", str(full["root"].parent))
    plan = tuned_plan(study)
    checked = 0
    for r in plan.runs:
        if r["sweep"] == "tune":
            continue
        cfg, final = plan.configs[r["run_id"]], full["docs"][r["arm"]]["final"]
        lr = final["lr"] * (r["tags"].get("lr_factor") or 1.0)
        assert cfg["optim"]["lr"] == pytest.approx(lr, rel=1e-12)
        assert cfg["model"]["init_scale"] == final["init_scale"]
        for name, value in final.items():
            if "." in name:
                comp, which = name.split(".")
                assert cfg["schedule"]["multipliers"][comp][which] == value
        checked += 1
    sizes = {(r["size"], r["sweep"]) for r in plan.runs}
    assert {("l", "main"), ("l", "lr"), ("l", "ladder"), ("s", "main"), ("s", "ladder")} <= sizes
    assert checked == sum(1 for r in plan.runs if r["sweep"] != "tune") > 20
    # At the tuning size, the seed-0 main run with the tuned settings is the search's best run.
    for arm, doc in full["docs"].items():
        main = [
            r["run_id"]
            for r in plan.runs
            if (r["size"], r["arm"], r["sweep"]) == ("s", arm, "main") and plan.configs[r["run_id"]]["seed"] == 0
        ]
        assert main == [doc["best_run_id"]]


def test_status_says_which_sizes_wait_for_tuning(full, tmp_path, monkeypatch, capsys):
    path = tmp_path / "tinytune.yaml"
    path.write_text(yaml.safe_dump(tiny()))
    monkeypatch.setenv("RLRS_RESULTS", str(tmp_path))
    assert cli_status(path) == 0
    assert "not planned until their family's tuning search is done" in capsys.readouterr().out
    monkeypatch.setenv("RLRS_RESULTS", str(full["root"].parent))
    assert cli_status(path) == 0
    out = capsys.readouterr().out
    assert "not planned" not in out
    n_tune = len({r["run_id"] for d in full["docs"].values() for r in d["trajectory"]})
    assert f"{n_tune} done" in out.splitlines()[-1]  # the search runs; the transfer runs are missing


# ------------------------------------------------------------------ bad input, plan


BAD = {
    "unknown size": ({"sizes": ["xl"]}, "tune.sizes[0]", "unknown size 'xl'; sizes of this study: s, l"),
    "two sizes of one family": ({"sizes": ["s", "l"]}, "tune.sizes[1]", "second dense size"),
    "unknown arm": ({"arms": {"rlrs2": "relative"}}, "tune.arms.rlrs2", "arms of this study: baseline, rlrs"),
    "unknown space": ({"arms": {"rlrs": "local"}}, "tune.arms.rlrs", "allowed: global, relative"),
    "unknown score": ({"score": "eval"}, "tune.score", "allowed: train_loss_last100, final_eval_loss"),
    "unknown parameter": ({"parameters": ["beta1"]}, "tune.parameters[0]", "allowed: lr, init_scale"),
    "bad budget": ({"max_runs": 0}, "tune.max_runs", "expected integer >= 1"),
    "norm is never tuned": ({"parameters": ["norm.start"]}, "tune.parameters[0]", "unknown parameter 'norm.start'"),
}


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_a_bad_tune_block_is_refused_naming_the_field(case, tmp_path, monkeypatch):
    monkeypatch.setenv("RLRS_RESULTS", str(tmp_path))
    change, field, message = BAD[case]
    study = tiny()
    study["tune"].update(change)
    with pytest.raises(ConfigError) as err:
        T.tune(check_study(study), log=quiet)
    assert err.value.field == field and message in str(err.value)
    assert not (tmp_path / "tinytune").exists()  # before any work


def test_plan_reports_the_tune_budget_and_the_transfer_cost(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RLRS_RESULTS", str(tmp_path))
    assert cli_plan(CONFIGS / "study-cpu-v1.yaml") == 0
    out = capsys.readouterr().out
    assert "dense-s x rlrs (relative, 12 parameters)                97 runs" in out  # 1 + 2 passes x 12 x 4
    assert "moe-s x rlrs (relative, 14 parameters)                 113 runs" in out
    assert "tune budget                                            276 runs" in out
    assert "main                  36" in out  # 3 sizes x 2 families x 2 arms x 3 seeds, after tuning
    hours = float(out.split("of one-thread runs, ~")[1].split(" h wall")[0])
    assert hours < 5  # a few hours on 2 cores (the real run: 6.9 CPU-hours of training, ~4 h wall)


def test_study_cpu_tunes_each_family_at_its_smallest_size():
    from rlrs.model import param_counts

    study = load_study(CONFIGS / "study-cpu-v1.yaml")
    found = {(s.size, s.arm, s.space, len(s.parameters)) for s in S.searches(study)}
    assert found == {
        ("dense-s", "baseline", "global", 4),
        ("dense-s", "rlrs", "relative", 12),
        ("moe-s", "baseline", "global", 4),
        ("moe-s", "rlrs", "relative", 14),
    }
    plan = make_plan(study, tune_state=S.load_state(study, root=Path("/nonexistent"), assume_done=True))
    main = [c for c in plan.configs.values() if c["meta"]["sweep"] == "main"]
    assert {c["seed"] for c in main} == {0, 1, 2}
    ladder = {c["meta"]["size"] for c in plan.configs.values() if c["meta"]["sweep"] == "ladder"}
    assert ladder == {f"{f}-{s}" for f in ("dense", "moe") for s in "sml"}
    n = {c["meta"]["size"]: param_counts(c["model"])["params_nonembedding"] for c in main}
    assert n["dense-l"] / n["dense-s"] >= 26 and n["moe-l"] / n["moe-s"] >= 26


# ------------------------------------------------------------------ the workflow


def test_snakemake_dry_run_waits_for_the_tune_checkpoint(tmp_path):
    out = subprocess.run(
        [
            str(BIN / "snakemake"),
            "-s",
            str(REPO / "Snakefile"),
            "-d",
            str(tmp_path),
            "-n",
            "--configfile",
            str(CONFIGS / "study-cpu-v1.yaml"),
        ],
        capture_output=True,
        text=True,
        env=user_env(),
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "Tuning study study-cpu-v1: the searches of its tune block" in out.stdout  # the tune checkpoint's message
    assert "results/study-cpu-v1/tune/moe-s.rlrs.json" in out.stdout
    assert "checkpoint jobs" in out.stdout  # the transfer runs are known only after it


@pytest.mark.slow
def test_rlrs_tune_searches_then_transfers_through_snakemake(tmp_path):
    """The whole command: search (local executor), then the study's runs with
    the tuned settings, the DuckDB and the report, by Snakemake."""
    study = tiny(arms={"rlrs": "relative"}, max_runs=5)
    study["executor"]["kind"] = "local"
    study["seeds"] = [0]
    study["sweeps"] = {}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    out = subprocess.run(
        [str(BIN / "rlrs"), "tune", str(path), "--cores", "2"],
        cwd=tmp_path,
        env=user_env(),
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "Tuning study tinytune" not in out.stdout + out.stderr  # Snakemake reused the search it was handed
    doc = json.loads((tmp_path / "results/tinytune/tune/s.rlrs.json").read_text())
    assert doc["runs_spent"] == 5 and doc["stop_reason"] == "max_runs"
    con = duckdb.connect(str(tmp_path / "results/tinytune/rlrs.duckdb"), read_only=True)
    try:
        assert con.execute("SELECT count(*) FROM tune_trajectory").fetchall() == [(5,)]
        rows = con.execute(
            "SELECT p.size, p.arm, r.lr, r.mult_embedding_start FROM runs r JOIN plan p USING (run_id) "
            "WHERE p.sweep = 'main' ORDER BY p.size, p.arm"
        ).fetchall()
    finally:
        con.close()
    final = doc["final"]
    assert ("l", "rlrs", final["lr"], final["embedding.start"]) in rows  # transferred unchanged to 27x
    assert ("l", "baseline", 0.003, 1.0) in rows  # an arm not tuned keeps its own settings
    html = (tmp_path / "reports/tinytune/index.html").read_text()
    assert 'data-spec="spec-tune_progress"' in html and "Tuned settings vs the paper" in html
    assert (tmp_path / "reports/tinytune/figures/tune_progress.png").exists()
