"""The workflow for real: Snakemake parses the Snakefile, submitit runs real
training jobs through the local executor, DuckDB holds the results.

Every test runs Snakemake in its own working directory (`-d TMP`), so
results/, reports/ and .snakemake/ land there and never in the checkout.
Snakemake is started the way a user starts it: `.venv/bin/snakemake`, as
`make demo` does, without the venv on PATH, or by name in an activated venv;
either way an rlrs and a snakemake that only fail come first on PATH, so a
rule that ran PATH's rlrs instead of its own Python's fails here."""

from __future__ import annotations

import atexit
import functools
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import duckdb
import pytest
import yaml

from rlrs.study import load_study, make_plan

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "workflow" / "configs"
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.slow


@functools.cache
def _decoys() -> Path:
    """A folder of `rlrs` and `snakemake` that only fail, loudly: put on a
    test's PATH, so that anything that runs PATH's rlrs or snakemake instead
    of its own Python's fails the test."""
    folder = Path(tempfile.mkdtemp(prefix="rlrs-decoys-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    for tool in ("rlrs", "snakemake"):
        script = folder / tool
        script.write_text(f"#!/bin/sh\necho 'the {tool} on PATH was called: {folder}/{tool}' >&2\nexit 127\n")
        script.chmod(0o755)
    return folder


def user_env(activated: bool = False, **env_vars: str) -> dict:
    """The environment of a user's shell: the venv is not on PATH, but some
    other rlrs and snakemake are (decoys that fail); no RLRS_RESULTS /
    RLRS_REPORTS. With `activated`, the venv's bin first on PATH and
    VIRTUAL_ENV set, as `. .venv/bin/activate` leaves them."""
    # (and none of the variables an outer `make test` hands down: a nested make would print its directory)
    ours = ("VIRTUAL_ENV", "RLRS_RESULTS", "RLRS_REPORTS", "MAKEFLAGS", "MAKELEVEL", "MFLAGS", "MAKEOVERRIDES")
    env = {k: v for k, v in os.environ.items() if k not in ours}
    path = [str(_decoys())] + [d for d in env.get("PATH", "").split(os.pathsep) if d and Path(d) != BIN]
    if activated:
        path.insert(0, str(BIN))
        env["VIRTUAL_ENV"] = str(BIN.parent)
    env["PATH"] = os.pathsep.join(path)
    env.update(env_vars)
    return env


def snakemake(
    workdir: Path, *args: str, timeout: int = 300, activated: bool = False, **env_vars: str
) -> subprocess.CompletedProcess:
    """`.venv/bin/snakemake ARGS` with nothing of ours on PATH, or, with
    `activated`, `snakemake ARGS` in an activated venv."""
    exe = "snakemake" if activated else str(BIN / "snakemake")
    cmd = [exe, "-s", str(REPO / "Snakefile"), "-d", str(workdir), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=user_env(activated, **env_vars))


def job_counts(output: str) -> dict[str, int]:
    """The 'Job stats' table of a snakemake run or dry run: rule -> count."""
    table = output.split("Job stats:", 1)[1] if "Job stats:" in output else ""
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M) if m.group(1) != "total"}


def unstaged(study: dict) -> dict:
    """The smoke study without its stages (one seed, no selection), for the
    tests of the train, batch and failure machinery."""
    for key in ("selection_seeds", "min_reported_seeds"):
        study.pop(key, None)
    study["seeds"] = [0]
    study.get("sweeps", {}).pop("lr", None)
    return study


def smoke() -> dict:
    return unstaged(yaml.safe_load((CONFIGS / "smoke.yaml").read_text()))


def created(workdir: Path) -> set[str]:
    return {p.name for p in workdir.iterdir()} - {".snakemake"}


# ------------------------------------------------------------- parse only


def test_gpu_study_dry_run_shows_the_grid(tmp_path):
    plan = make_plan(load_study(CONFIGS / "study-gpu.yaml"), CONFIGS / "study-gpu.yaml")
    out = snakemake(tmp_path, "-n", "--configfile", str(CONFIGS / "study-gpu.yaml"))
    assert out.returncode == 0, out.stderr
    assert job_counts(out.stdout) == {"plan": 1, "train": len(plan.configs), "collect": 1, "report": 1, "all": 1}
    assert "results/study-gpu/runs/" in out.stdout and "reports/study-gpu/index.html" in out.stdout
    # Each job shows its rule's one-line message.
    assert out.stdout.count("Training run ") == len(plan.configs)
    assert "Writing the report of study study-gpu: reports/study-gpu/index.html" in out.stdout
    assert created(tmp_path) == set()  # a dry run writes nothing


def test_bare_snakemake_targets_the_demo_report(tmp_path):
    # The demo is staged: its run ids wait for the select checkpoint (stage 1).
    out = snakemake(tmp_path, "-n")
    assert out.returncode == 0, out.stderr
    assert job_counts(out.stdout) == {"select": 1, "plan": 1, "collect": 1, "report": 1, "all": 1}
    assert "Choosing the lrs of study demo: stage 1 on its selection seeds" in out.stdout
    assert "Writing the report of study demo: reports/demo/index.html" in out.stdout
    assert created(tmp_path) == set()


def test_results_and_reports_roots_are_configurable(tmp_path):
    out = snakemake(
        tmp_path,
        "-n",
        "--configfile",
        str(CONFIGS / "smoke.yaml"),
        RLRS_RESULTS=str(tmp_path / "res"),
        RLRS_REPORTS=str(tmp_path / "rep"),
    )
    assert out.returncode == 0, out.stderr
    assert f"Writing the plan of study smoke: {tmp_path}/res/smoke/plan.json" in out.stdout
    assert f"Writing the report of study smoke: {tmp_path}/rep/smoke/index.html" in out.stdout
    assert f"stage 1 on its selection seeds (progress: {tmp_path}/res/smoke/logs/select.log)" in out.stdout


def _set(path: str, value):
    """A study mutation: set the dotted field `path` to `value`."""

    def mutate(study: dict) -> None:
        *parents, key = path.split(".")
        node = study
        for p in parents:
            node = node[p]
        node[key] = value

    return mutate


# Malformed variants of the smoke study -> the one line that refuses each. The
# schema's errors (rlrs checks the study against it itself), cross-field
# errors and every expanded run config's errors alike.
BAD = {
    # A study missing `sizes` must not inherit the demo's (the configfile pitfall).
    "missing sizes": (
        lambda s: s.pop("sizes"),
        "sizes: required key is missing (keys here: arms, defaults, description, executor, health, lr_rule, min_reported_seeds, reuse_runs_from, scaling, seeds, selection_seeds, sizes, study, sweeps, tune)",
    ),
    "unknown key": (
        _set("colour", "blue"),
        "colour: unknown key; allowed keys here: arms, defaults, description, executor, health, lr_rule, min_reported_seeds, reuse_runs_from, scaling, seeds, selection_seeds, sizes, study, sweeps, tune",
    ),
    "unknown executor": (
        _set("executor.kind", "cluster"),
        "executor.kind: 'cluster' is not allowed; allowed: local, slurm, debug",
    ),
    "unknown component": (
        _set("arms.rlrs.multipliers.expert", {"start": 1, "end": 1}),
        "arms.rlrs.multipliers.expert: unknown name 'expert'; allowed: embedding, attention, ffn, router, experts, head",
    ),
    "seeds not a list": (_set("seeds", "zero"), "seeds: 'zero' has the wrong type; expected array"),
    "unknown sweep arm": (
        _set("sweeps.ladder.arm", "nope"),
        "sweeps.ladder.arm: unknown arm 'nope'; arms of this study: baseline, rlrs",
    ),
    "negative lr": (
        _set("defaults.optim.lr", -0.003),
        "sizes.tiny x arms.baseline: run config field optim.lr: -0.003 is not valid: expected number > 0",
    ),
    "lr not a number": (
        _set("defaults.optim.lr", "fast"),
        "sizes.tiny x arms.baseline: run config field optim.lr: 'fast' has the wrong type; expected number",
    ),
    "run config": (
        _set("sizes.tiny.n_heads", 3),
        "sizes.tiny x arms.baseline: run config field model.n_heads: 3 must divide d_model=16",
    ),
}
PROFILE_NOTE = "Using workflow specific profile"  # Snakemake's own first line on every call


@pytest.mark.parametrize(("case", "mode"), [(case, "-c1") for case in sorted(BAD)] + [("negative lr", "-n")])
def test_bad_study_is_refused_in_one_line_before_any_job(case, mode, tmp_path):
    mutate, message = BAD[case]
    study = yaml.safe_load((CONFIGS / "smoke.yaml").read_text())
    mutate(study)
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(study))
    out = snakemake(tmp_path, mode, "--configfile", str(path))
    assert out.returncode == 2, out.stdout + out.stderr
    lines = [
        line for line in (out.stdout + out.stderr).splitlines() if line.strip() and not line.startswith(PROFILE_NOTE)
    ]
    assert lines == [f"error: {path}: {message}"]  # the field's error, and no traceback
    assert created(tmp_path) == {"broken.yaml"}  # no results/, no reports/


# ------------------------------------------------------------- real runs


def db_runs(db: Path) -> list[str]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return sorted(r[0] for r in con.execute("SELECT run_id FROM runs").fetchall())
    finally:
        con.close()


def mtimes(paths) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in paths}


def test_smoke_study_end_to_end_rebuilds_what_is_lost(tmp_path):
    study_file = CONFIGS / "smoke.yaml"
    run = snakemake(tmp_path, "-c2", "--configfile", str(study_file))
    assert run.returncode == 0, run.stderr[-3000:]
    results = tmp_path / "results" / "smoke"
    plan = json.loads((results / "plan.json").read_text())
    planned = sorted({r["run_id"] for r in plan["runs"]})
    # Stage 1 chose each arm's lr on seed 100; stage 2 ran at the chosen lrs on seeds 0-2.
    chosen = {}
    for arm in ("baseline", "rlrs"):
        doc = json.loads((results / "select" / f"tiny.{arm}.json").read_text())
        assert doc["status"] == "done" and doc["chosen_lr"] is not None
        chosen[arm] = doc["chosen_lr"]
        assert {r["run_id"] for r in plan["runs"] if r["sweep"] == "lr" and r["arm"] == arm} == {
            p["runs"]["100"] for p in doc["points"]
        }
    configs = plan["configs"]
    runs_of = {
        sweep: sorted(
            (
                r["arm"],
                configs[r["run_id"]]["seed"],
                configs[r["run_id"]]["optim"]["lr"],
                configs[r["run_id"]]["train"]["steps"],
            )
            for r in plan["runs"]
            if r["sweep"] == sweep
        )
        for sweep in ("main", "ladder")
    }
    assert runs_of["main"] == sorted((a, s, chosen[a], 30) for a in chosen for s in (0, 1, 2))
    assert runs_of["ladder"] == sorted(("baseline", s, chosen["baseline"], n) for s in (0, 1, 2) for n in (15, 30))
    assert len(planned) == len(plan["runs"]) - 3  # the main baseline runs are also the ladder's x1 points
    selected = {r["run_id"] for r in plan["runs"] if r["sweep"] == "lr"}
    assert "Choosing the lrs of study smoke" in run.stdout + run.stderr
    assert plan["study"] == "smoke" and plan["study_file"] == str(study_file)
    assert plan["study_sha256"] == hashlib.sha256(study_file.read_bytes()).hexdigest()
    assert db_runs(results / "rlrs.duckdb") == planned
    for rid in planned:
        summary = json.loads((results / "runs" / rid / "summary.json").read_text())
        assert summary["status"] == "completed" and summary["executor"] == "local" and summary["job_id"]
        assert not (results / "runs" / rid / "submitted.json").exists()
        # Each job's log, under results/<study>/logs/ (stage 1's runs: the select step's log).
        log = "select.log" if rid in selected else f"train/{rid}.log"
        assert (
            f"[{rid}] completed: final eval loss {summary['final_eval_loss']}" in (results / "logs" / log).read_text()
        )
    report = tmp_path / "reports" / "smoke" / "index.html"
    assert report.stat().st_size > 0
    assert "collected into" in (results / "logs" / "collect.log").read_text()
    assert "wrote reports/smoke/index.html" in (results / "logs" / "report.log").read_text()
    assert (
        "Study smoke is complete: report reports/smoke/index.html, database results/smoke/rlrs.duckdb"
        in run.stdout + run.stderr
    )

    # Nothing to do on a rerun.
    again = snakemake(tmp_path, "-c2", "--configfile", str(study_file))
    assert again.returncode == 0 and job_counts(again.stdout + again.stderr) == {}
    assert "Nothing to be done" in again.stdout + again.stderr

    # Every output a user can lose is rebuilt by the same command, and no run
    # is trained again: a run's metrics.parquet is written by training only.
    runs = [results / "runs" / rid for rid in planned]
    trained = mtimes(r / "metrics.parquet" for r in runs)
    summaries = {rid: (results / "runs" / rid / "summary.json").read_bytes() for rid in planned}
    lost_and_redone = {
        results / "rlrs.duckdb": {"collect": 1, "report": 1, "all": 1},
        report: {"report": 1, "all": 1},
        # plan.json: the train jobs find their runs finished and train nothing.
        results / "plan.json": {"plan": 1, "train": len(planned) - len(selected), "collect": 1, "report": 1, "all": 1},
    }
    for lost, jobs in lost_and_redone.items():
        before = lost.read_bytes()
        lost.unlink()
        redo = snakemake(tmp_path, "-c2", "--configfile", str(study_file))
        assert redo.returncode == 0, redo.stderr[-3000:]
        assert lost.exists(), f"{lost.name} was not rebuilt"
        assert job_counts(redo.stdout + redo.stderr) == jobs, lost.name
        assert mtimes(r / "metrics.parquet" for r in runs) == trained, f"losing {lost.name} retrained a run"
        assert {rid: (results / "runs" / rid / "summary.json").read_bytes() for rid in planned} == summaries
        if lost.name == "plan.json":
            assert lost.read_bytes() == before
            for rid in set(planned) - selected:
                assert (
                    results / "logs" / "train" / f"{rid}.log"
                ).read_text() == f"[{rid}] already completed: nothing to do\n"
        assert db_runs(results / "rlrs.duckdb") == planned

    # Losing one run's summary retrains that run only (then re-collects and re-reports).
    victim = next(r["run_id"] for r in plan["runs"] if r["sweep"] == "main")
    (results / "runs" / victim / "summary.json").unlink()
    dry = snakemake(tmp_path, "-n", "--configfile", str(study_file))
    assert job_counts(dry.stdout) == {"train": 1, "collect": 1, "report": 1, "all": 1}
    assert f"runs/{victim}/summary.json" in dry.stdout
    redo = snakemake(tmp_path, "-c2", "--configfile", str(study_file))
    assert redo.returncode == 0, redo.stderr[-3000:]
    assert job_counts(redo.stdout + redo.stderr)["train"] == 1
    assert db_runs(results / "rlrs.duckdb") == planned


def test_a_size_whose_every_lr_diverges_fails_and_the_workflow_still_ends(tmp_path):
    """The smoke study with a second size at an absurd lr: stage 1 walks its
    grid down to the cap, every run diverges, the cell fails; the workflow
    measures the other size, collects and reports, and is done."""
    study = yaml.safe_load((CONFIGS / "smoke.yaml").read_text())
    study["sizes"]["blowup"] = dict(study["sizes"]["tiny"], overrides={"optim": {"lr": 1.0e6}})
    study["arms"] = {"baseline": {}}
    study["sweeps"].pop("ladder")
    path = tmp_path / "diverges.yaml"
    path.write_text(yaml.safe_dump(study | {"study": "diverges"}))
    run = snakemake(tmp_path, "-c2", "--configfile", str(path))
    assert run.returncode == 0, run.stderr[-3000:]
    results = tmp_path / "results" / "diverges"
    doc = json.loads((results / "select" / "blowup.baseline.json").read_text())
    assert doc["failed"] and doc["chosen_lr"] is None and len(doc["points"]) == 4  # the grid + 1 below it
    plan = json.loads((results / "plan.json").read_text())
    assert sorted({r["size"] for r in plan["runs"] if r["sweep"] == "main"}) == ["tiny"]
    con = duckdb.connect(str(results / "rlrs.duckdb"), read_only=True)
    try:
        assert con.execute("SELECT size, failed FROM lr_selection ORDER BY size").fetchall() == [
            ("blowup", True),
            ("tiny", False),
        ]
        assert con.execute(
            "SELECT status FROM health WHERE check_name = 'lr_bracketed' AND size = 'blowup'"
        ).fetchall() == [("fail",)]
    finally:
        con.close()
    page = (tmp_path / "reports" / "diverges" / "index.html").read_text()
    assert "<li>blowup (baseline): the lr selection failed (every lr diverged" in page
    assert "Study diverges is complete" in run.stdout + run.stderr


def test_failed_run_names_its_log_and_is_redone_alone(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(b"not utf-8 \xff\xfe\n" * 100)  # passes the parse-time check, fails when loaded
    study = smoke()
    study["study"] = "fail"
    study["sweeps"] = {}
    study["arms"]["rlrs"]["overrides"] = {"data": {"corpus": f"text:{corpus}"}}
    path = tmp_path / "fail.yaml"
    path.write_text(yaml.safe_dump(study))
    runs = tmp_path / "results" / "fail" / "runs"

    out = snakemake(tmp_path, "-c2", "--keep-going", "--configfile", str(path), "--until", "train")
    assert out.returncode != 0
    plan = json.loads((tmp_path / "results" / "fail" / "plan.json").read_text())
    by_arm = {r["arm"]: r["run_id"] for r in plan["runs"]}
    good, bad = runs / by_arm["baseline"], runs / by_arm["rlrs"]
    assert json.loads((good / "summary.json").read_text())["status"] == "completed"
    assert not (bad / "summary.json").exists()  # Snakemake removes a failed job's output
    failure = json.loads((bad / "failure.json").read_text())
    assert "is not UTF-8 text" in failure["error"]
    assert f"job log: {failure['stderr']}" in out.stderr and Path(failure["stderr"]).exists()
    assert "is not UTF-8 text" in Path(failure["stderr"]).read_text()
    status = subprocess.run([str(BIN / "rlrs"), "status", str(path)], capture_output=True, text=True, cwd=tmp_path)
    assert "1 done, 0 diverged, 1 failed, 0 running, 0 missing" in status.stdout

    corpus.write_text("It is a truth universally acknowledged.\n" * 2000)  # fix the input
    redo = snakemake(tmp_path, "-c2", "--configfile", str(path), "--until", "train")
    assert redo.returncode == 0, redo.stderr[-3000:]
    assert job_counts(redo.stdout + redo.stderr) == {"train": 1}
    assert json.loads((bad / "summary.json").read_text())["status"] == "completed"
    assert not (bad / "failure.json").exists()


def test_diverged_run_is_a_result_not_a_failure(tmp_path):
    from rlrs.study import check_study, write_plan

    from _cli_fixtures import cli_submit

    study = smoke()
    study.update(study="div", sweeps={"main": {"arms": ["baseline"]}})
    study["defaults"]["optim"].update(lr=1.0e4, grad_clip=None)
    study["defaults"]["train"].update(steps=200, eval_interval=50)
    plan = make_plan(check_study(study))
    write_plan(plan, tmp_path / "div" / "plan.json")
    (rid,) = plan.run_ids
    assert cli_submit([tmp_path / "div" / "runs" / rid], executor="debug") == 0
    summary = json.loads((tmp_path / "div" / "runs" / rid / "summary.json").read_text())
    assert summary["status"] == "diverged"


def _children(pid: int) -> list[int]:
    """Process ids whose parent is `pid` (from /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def test_preempted_local_job_checkpoints_requeues_and_resumes(tmp_path):
    """TrainJob is Checkpointable for real: on the signal Slurm sends before
    a time limit or a preemption (SIGUSR2), submitit calls
    TrainJob.checkpoint(), requeues the job, and the trainer resumes from
    RUN_DIR/checkpoint.pt to the end."""
    import signal
    import time

    import submitit

    from rlrs.config import resolve
    from rlrs.launch import TrainJob

    study = yaml.safe_load((CONFIGS / "smoke.yaml").read_text())
    raw = {k: study["defaults"][k] for k in ("model", "optim", "schedule", "data")}
    raw["model"].update(d_model=16, n_layers=1, n_heads=2)
    raw["train"] = {**study["defaults"]["train"], "steps": 1500, "eval_interval": 500, "checkpoint_interval": 50}
    config = resolve(raw)
    run_dir = tmp_path / "run"
    ex = submitit.LocalExecutor(folder=run_dir / "submitit")
    ex.update_parameters(timeout_min=5)
    job = ex.submit(TrainJob(), [(config, str(run_dir))], "local")
    deadline = time.time() + 120
    while not (run_dir / "checkpoint.pt").exists() and time.time() < deadline:
        time.sleep(0.02)
    (task,) = _children(int(job.job_id))  # the controller's one task runs TrainJob
    os.kill(task, signal.SIGUSR2)
    (outcome,) = job.result()
    summary = outcome["summary"]
    assert summary["status"] == "completed" and summary["steps_done"] == 1500
    assert summary["job_id"] == job.job_id
    log = Path(job.paths.stderr).read_text()
    # (submitit's local environment reports every USR2 as a time-out)
    assert "Caught signal SIGUSR2" in log
    assert re.search(r"resuming at step [1-9]\d*/1500", log), log[-2000:]
    assert "Requeued job" in Path(job.paths.stdout).read_text()
    assert not (run_dir / "checkpoint.pt").exists()  # removed at the end


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_stopping_submit_cancels_its_job(tmp_path):
    """Snakemake stops a job with SIGTERM (Ctrl-C, --keep-going shutdown): the
    local job's controller and its training process must go down with it."""
    import signal
    import time

    from rlrs.study import check_study, write_plan

    study = smoke()
    study.update(study="stop", sweeps={"main": {"arms": ["baseline"]}})
    study["defaults"]["train"].update(steps=100000, eval_interval=50000)
    plan = make_plan(check_study(study))
    write_plan(plan, tmp_path / "stop" / "plan.json")
    run_dir = tmp_path / "stop" / "runs" / plan.run_ids[0]
    proc = subprocess.Popen([str(BIN / "rlrs"), "submit", str(run_dir)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while (
        not (run_dir / "metrics.parquet").exists()
        and not (run_dir / "checkpoint.pt").exists()
        and time.time() < deadline
    ):
        time.sleep(0.05)
    submitted = json.loads((run_dir / "submitted.json").read_text())
    controller = int(submitted["job_id"])
    tasks = _children(controller)
    assert tasks and _alive(controller)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    deadline = time.time() + 15
    while any(_alive(p) for p in [controller, *tasks]) and time.time() < deadline:
        time.sleep(0.1)
    assert not any(_alive(p) for p in [controller, *tasks])
    assert not (run_dir / "summary.json").exists() and not (run_dir / "submitted.json").exists()


# ------------------------------------------------------- batched submission


def _study_file(tmp_path: Path, name: str, **executor) -> Path:
    study = smoke()
    study["study"] = name
    study["executor"].update(executor)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def test_batched_study_trains_runs_in_shared_jobs_and_redoes_a_lost_one(tmp_path):
    path = _study_file(tmp_path, "batched", runs_per_job=2)
    run = snakemake(tmp_path, "-c2", "--configfile", str(path), activated=True)  # `snakemake -c2` in an activated venv
    assert run.returncode == 0, run.stderr[-3000:]
    counts = job_counts(run.stdout + run.stderr)
    assert counts["train_batch"] == 2 and "train" not in counts  # 3 runs, 2 to a job
    results = tmp_path / "results" / "batched"
    planned = sorted(make_plan(load_study(path)).run_ids)
    assert db_runs(results / "rlrs.duckdb") == planned
    summaries = {rid: json.loads((results / "runs" / rid / "summary.json").read_text()) for rid in planned}
    assert all(s["status"] == "completed" for s in summaries.values())
    jobs = sorted(s["job_id"] for s in summaries.values())
    assert len(set(jobs)) == 2 and jobs.count(max(jobs, key=jobs.count)) == 2  # one job trained two runs

    again = snakemake(tmp_path, "-c2", "--configfile", str(path))
    assert again.returncode == 0 and job_counts(again.stdout + again.stderr) == {}

    # A lost summary: its batch runs again and trains that run only.
    shared = [rid for rid in planned if jobs.count(summaries[rid]["job_id"]) == 2]
    victim, partner = shared
    partner_mtime = (results / "runs" / partner / "summary.json").stat().st_mtime_ns
    (results / "runs" / victim / "summary.json").unlink()
    redo = snakemake(tmp_path, "-c2", "--configfile", str(path))
    assert redo.returncode == 0, redo.stderr[-3000:]
    assert job_counts(redo.stdout + redo.stderr) == {"train_batch": 1, "collect": 1, "report": 1, "all": 1}
    assert json.loads((results / "runs" / victim / "summary.json").read_text())["status"] == "completed"
    assert (results / "runs" / partner / "summary.json").stat().st_mtime_ns == partner_mtime
    assert db_runs(results / "rlrs.duckdb") == planned


def test_a_failing_run_does_not_stop_the_rest_of_its_batch(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(b"not utf-8 \xff\xfe\n" * 100)
    study = smoke()
    study.update(study="batchfail", sweeps={})
    study["executor"]["runs_per_job"] = 2
    study["arms"]["rlrs"]["overrides"] = {"data": {"corpus": f"text:{corpus}"}}
    path = tmp_path / "batchfail.yaml"
    path.write_text(yaml.safe_dump(study))
    runs = tmp_path / "results" / "batchfail" / "runs"

    out = snakemake(tmp_path, "-c2", "--configfile", str(path), "--until", "train_batch")
    assert out.returncode != 0
    plan = json.loads((tmp_path / "results" / "batchfail" / "plan.json").read_text())
    by_arm = {r["arm"]: r["run_id"] for r in plan["runs"]}
    good, bad = runs / by_arm["baseline"], runs / by_arm["rlrs"]
    good_summary = json.loads((good / "summary.json").read_text())
    assert good_summary["status"] == "completed"
    failure = json.loads((bad / "failure.json").read_text())
    assert failure["job_id"] == good_summary["job_id"]  # the same job trained both
    assert "is not UTF-8 text" in failure["error"] and "is not UTF-8 text" in out.stderr

    corpus.write_text("It is a truth universally acknowledged.\n" * 2000)
    good_mtime = (good / "summary.json").stat().st_mtime_ns
    redo = snakemake(tmp_path, "-c2", "--configfile", str(path), "--until", "train_batch")
    assert redo.returncode == 0, redo.stderr[-3000:]
    assert json.loads((bad / "summary.json").read_text())["status"] == "completed"
    assert (good / "summary.json").stat().st_mtime_ns == good_mtime  # finished: skipped, not retrained
    assert not (bad / "failure.json").exists()
