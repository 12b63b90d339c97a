"""Submitting runs through submitit: `rlrs submit RUN_DIR...`.

Snakemake has no submitit executor plugin, so its train rule calls this: the
run's resolved config comes from the study's plan.json (one source of truth,
written by the workflow), the job goes to an explicitly named submitit
executor, and the command waits for it and exits non-zero with the job's log
paths when it fails.

- The executor is a setting (study `executor.kind`, or `--executor`), never
  guessed: submitit's AutoExecutor picks Slurm whenever `srun` is on PATH.
- Every job has a time limit (`executor.timeout_min`).
- The submitted callable is `TrainJob`, a submitit `Checkpointable`: when a
  Slurm job hits its time limit or is preempted, submitit calls `checkpoint()`
  and requeues it, and the trainer resumes from RUN_DIR/checkpoint.pt.
- The parent process stays light (no torch import): it reads JSON, submits,
  and polls. submitit's own `Job.wait()` sleeps a fixed 1 s between polls, so
  for local jobs we poll `job.done()` ourselves every LOCAL_POLL_S (a
  subprocess poll, cheap); Slurm jobs keep 1 s (each poll may call sacct).

A run that finished in a study named by the study's `reuse_runs_from` is
copied from there instead of submitted (rlrs.study.reuse): no job at all.

Run-directory markers (rlrs.rundir), read by `rlrs status`: `submitted.json`
while a job is in flight (job id, executor, log paths), `failure.json` after a
failed job (Snakemake deletes a failed job's summary.json, so the failure is
kept here).
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import sys
import time
import traceback
from pathlib import Path

import submitit
from submitit.core.utils import pickle_load
from submitit.helpers import Checkpointable

from rlrs import atomic, paths, rundir
from rlrs.errors import ConfigError
from rlrs.executor import KINDS, check_world, executor_settings, slurm_parameters, world_size
from rlrs.provenance import utc_now
from rlrs.study import reuse
from rlrs.study.plan import chunks, load_plan, tuned_plan
from rlrs.study.validate import load_study

LOCAL_POLL_S = 0.05
SLURM_POLL_S = 1.0
SUBMITIT_DIR = "submitit"  # per-run job folder (pickles and logs), inside RUN_DIR


class TrainJob(Checkpointable):
    """The callable a submitit job runs: train one or more run directories.

    Importable and pickleable (module level, no state but its arguments).
    `Checkpointable.checkpoint()` resubmits `self` with the same arguments,
    which is exactly a resume: the trainer picks up RUN_DIR/checkpoint.pt.
    """

    def checkpoint(self, *args, **kwargs):
        # Requeueing makes Slurm SIGTERM every process of the job, which can
        # kill submitit's `scontrol requeue` before it returns (seen about
        # once in a dozen requeues): ignore SIGTERM from here on.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        return super().checkpoint(*args, **kwargs)

    def __call__(self, runs: list[tuple[dict, str]], executor: str) -> list[dict]:
        """Train each (config, run_dir) in turn in this one process (torch is
        imported once per job, not once per run); a run already finished
        (on a requeue) is skipped. One run's error does not stop the others:
        each outcome is {"run_dir", "summary"} or {"run_dir", "error"}."""
        # One torch thread per grid run (two runs side by side beat one run on
        # two threads here); set before torch is imported so its pools agree.
        threads = str(runs[0][0].get("train", {}).get("threads", 1))
        os.environ.setdefault("OMP_NUM_THREADS", threads)
        os.environ.setdefault("MKL_NUM_THREADS", threads)
        # Imported here, in the job: the submitting process stays torch-free.
        from rlrs.train import train

        try:
            job_id = submitit.JobEnvironment().job_id
        except RuntimeError:  # the debug executor runs in-process, outside a job
            job_id = None
        outcomes = []
        for config, run_dir in runs:
            summary = rundir.finished_summary(Path(run_dir))
            try:
                if summary is None:
                    summary = train(config, Path(run_dir), executor=executor, job_id=job_id)
                if summary.get("status") not in rundir.TERMINAL:
                    raise RuntimeError(f"run {run_dir} ended {summary.get('status')}: {summary.get('error')}")
            except Exception:
                if len(runs) == 1:
                    raise  # submitit reports it with the job's traceback
                outcomes.append({"run_dir": run_dir, "error": traceback.format_exc()})
                continue
            # Plain JSON types only: the parent unpickles this, and a torch object
            # in it (torch.__version__ is a TorchVersion) would import torch there.
            outcomes.append({"run_dir": run_dir, "summary": json.loads(json.dumps(summary, default=str))})
        return outcomes


def make_executor(kind: str, folder: Path, settings: dict) -> submitit.Executor:
    """Build the named submitit executor explicitly, with its time limit."""
    timeout = int(settings["timeout_min"])
    if kind == "local":
        ex = submitit.LocalExecutor(folder=folder)
        # One subprocess per task; each finds the others through SUBMITIT_LOCAL_* (rlrs.parallel).
        ex.update_parameters(timeout_min=timeout, tasks_per_node=int(settings.get("tasks_per_node", 1)))
    elif kind == "debug":
        ex = submitit.DebugExecutor(folder=folder)
        ex.update_parameters(timeout_min=timeout)
    elif kind == "slurm":
        ex = submitit.SlurmExecutor(folder=folder)  # refuses to start without srun on PATH
        ex.update_parameters(**slurm_parameters(settings))
    else:
        raise ConfigError("executor.kind", f"{kind!r} is not an executor; allowed: {', '.join(KINDS)}")
    return ex


def load_configs(run_dirs: list[Path], plan: Path | None, study: Path | None) -> tuple[dict, dict, list[str]]:
    """(run_id -> resolved config, executor settings, the studies it reuses
    runs from) from a plan or a study.

    Default: the plan of the study the run directories belong to,
    results/<study>/plan.json two levels above results/<study>/runs/<id>/."""
    if study is not None:
        st = load_study(study)
        p = tuned_plan(st, study_file=study)  # with a tune block: the transfer runs of finished searches
        return p.configs, executor_settings(st), reuse.sources(st)
    if plan is None:
        plan = paths.plan_of_run_dir(run_dirs[0])
    doc = load_plan(plan)
    study_config = doc.get("study_config") or {}
    return doc["configs"], doc.get("executor") or executor_settings(study_config), reuse.sources(study_config)


def check_parallel(configs: list[dict], settings: dict, kind: str) -> None:
    """Refuse, before any job starts, a job shape the runs cannot train on."""
    if kind != "slurm" and int(settings.get("nodes", 1)) > 1:
        raise ConfigError(
            "executor.nodes", f"{settings['nodes']}: the {kind} executor runs on this machine; allowed: 1"
        )
    if kind == "debug" and int(settings.get("tasks_per_node", 1)) > 1:
        raise ConfigError("executor.tasks_per_node", "the debug executor runs in this one process; allowed: 1")
    tasks, gpus = int(settings.get("tasks_per_node", 1)), (settings.get("slurm") or {}).get("gpus_per_node")
    if kind == "slurm" and gpus is not None and gpus < tasks and any(c["train"]["device"] == "cuda" for c in configs):
        raise ConfigError(
            "executor.slurm.gpus_per_node", f"{gpus} GPUs for {tasks} processes per node; one GPU per process"
        )
    for cfg in configs:
        check_world(cfg, world_size(settings))


def _lead(job):
    """Task 0 of a job (the job itself when it has one task): rank 0, whose
    result and logs stand for the job."""
    return job.task(0)


def _wait(jobs: list, kind: str) -> None:
    """Until every job has written its result file (submitit writes it
    atomically as the callable returns, before the job's Python and the local
    controller shut down, ~0.5 s later with torch loaded) or has ended
    without one (killed, out of requeues)."""
    if kind == "debug":
        return  # runs in-process when its result is asked for
    poll = SLURM_POLL_S if kind == "slurm" else LOCAL_POLL_S
    while not all(_lead(j).paths.result_pickle.exists() or j.done() for j in jobs):
        time.sleep(poll)


def _last_error(exc: Exception, stderr_path: str) -> str:
    """The job's own error line: the last 'SomeError: message' line of the
    traceback the exception carries, or of the job's stderr; else the exception."""
    try:
        log = Path(stderr_path).read_text(errors="replace")
    except FileNotFoundError:
        log = ""
    for text in (str(exc), log):
        for line in reversed(text.splitlines()):
            head = line.split(":", 1)[0]
            if ":" in line and not line.startswith(" ") and head.rsplit(".", 1)[-1].endswith(("Error", "Exception")):
                return line.strip()
    return f"{type(exc).__name__}: {str(exc).strip()[-500:]}"


def _log_paths(job) -> dict:
    return {"stdout": str(_lead(job).paths.stdout), "stderr": str(_lead(job).paths.stderr)}


class JobFailed(RuntimeError):
    """A job's callable raised; the message ends with the job's traceback."""


def _result(job, kind: str):
    """The job's return value, or raise its error."""
    if kind == "debug":
        # DebugJob.result() opens pdb on an exception; run the submission directly.
        return job.submission().result()
    lead = _lead(job)
    if lead.paths.result_pickle.exists():
        # Read the result file directly: job.result() would first wait for the
        # job's process to exit, polling at submitit's fixed 1 s.
        outcome, value = pickle_load(lead.paths.result_pickle)
        if outcome == "success":
            return value
        raise JobFailed(f"job {job.job_id} failed:\n{value}")
    return lead.result()  # no result file: submitit says why (killed, timed out too often)


def copy_reused(run_dirs: list[Path], configs: dict, reuse_from: list[str] | tuple) -> list[Path]:
    """Copy every unfinished run that finished in a `reuse_from` study
    (rlrs.study.reuse) instead of training it; returns the copied ones."""
    copied = []
    for d in run_dirs if reuse_from else []:
        if rundir.finished_summary(d) is not None:
            continue
        summary = reuse.copy_finished(d, configs[d.name], list(reuse_from))
        if summary is not None:
            origin = (atomic.read_json(d / rundir.REUSED) or {}).get("from_study")
            loss = summary.get("final_eval_loss")
            print(
                f"[{d.name}] {summary['status']} in study {origin}: reused (copied, not trained), final eval loss {loss}"
            )
            copied.append(d)
    return copied


def local_runs_per_job(n_runs: int, kind: str, cores: int) -> int:
    """Runs per job for a batch of `n_runs`: on the local executor, enough that
    the batch never runs more jobs at once than `cores` (a job trains its runs
    one after another; more single-thread runs than cores only share them, and
    each one's step time then measures the crowding); on a cluster 1, and the
    scheduler places the jobs."""
    return max(1, math.ceil(n_runs / max(1, cores))) if kind == "local" else 1


def balanced_groups(run_dirs: list[Path], configs: dict, size: int) -> list[list[Path]]:
    """The run directories in as many groups of at most `size` as
    consecutive chunks would make, dealt longest first to the group with the
    least time so far that has room: jobs that run side by side end together
    instead of one core idling while the other trains the batch's largest
    runs. A run's time is `rlrs plan`'s estimate of it
    (rlrs.study.estimate.run_cost on the measured step times). Each group
    keeps the caller's order."""
    size = max(1, int(size))
    n_groups = math.ceil(len(run_dirs) / size)
    if n_groups <= 1 or size == 1:
        return chunks(run_dirs, size)
    from rlrs.study import calibration, estimate  # imports torch (the model's parameter count)

    cal = calibration.load()
    seconds = {d: estimate.run_cost(configs[d.name], cal)["seconds"] for d in run_dirs}
    order = {d: i for i, d in enumerate(run_dirs)}
    groups: list[list[Path]] = [[] for _ in range(n_groups)]
    load = [0.0] * n_groups
    for d in sorted(run_dirs, key=lambda d: (-seconds[d], order[d])):
        g = min((i for i in range(n_groups) if len(groups[i]) < size), key=lambda i: (load[i], i))
        groups[g].append(d)
        load[g] += seconds[d]
    return [sorted(g, key=order.__getitem__) for g in groups]


def submit(
    run_dirs: list[Path],
    configs: dict,
    settings: dict,
    kind: str,
    runs_per_job: int | None = None,
    reuse_from: list[str] | tuple = (),
) -> int:
    """Submit the run directories (`runs_per_job` to a job: the study's
    `executor.runs_per_job` unless given), wait for all, report. A run
    finished in one of the `reuse_from` studies (the study's
    reuse_runs_from) is copied from there instead (rlrs.study.reuse). Returns
    the exit code: 0 when every run ended completed or diverged."""
    if kind not in KINDS:
        raise ConfigError("--executor", f"{kind!r} is not an executor; allowed: {', '.join(KINDS)}")
    missing = [d.name for d in run_dirs if d.name not in configs]
    if missing:
        raise ConfigError(
            "run_dirs",
            f"run id(s) {', '.join(missing)} are not in the plan; the directory name must be a planned run id "
            "(re-run snakemake to rewrite plan.json after editing the study)",
        )
    check_parallel([configs[d.name] for d in run_dirs], settings, kind)
    copied = copy_reused(run_dirs, configs, reuse_from)
    todo = []
    for d in run_dirs:
        if d in copied:
            continue
        done = rundir.finished_summary(d)
        if done is not None:  # nothing to train: skip the job (and its torch import)
            print(f"[{d.name}] already {done['status']}: nothing to do")
            continue
        d.mkdir(parents=True, exist_ok=True)
        (d / rundir.FAILURE).unlink(missing_ok=True)
        todo.append(d)

    jobs = []  # (run dirs, job)
    for group in balanced_groups(todo, configs, runs_per_job or settings.get("runs_per_job", 1)):
        # A job's pickles and logs live in its first run's directory; every
        # run of the job points at them from its submitted.json.
        ex = make_executor(kind, group[0] / SUBMITIT_DIR, settings)
        job = ex.submit(TrainJob(), [(configs[d.name], str(d.resolve())) for d in group], kind)
        for d in group:
            atomic.write_json(
                d / rundir.SUBMITTED,
                {
                    "run_id": d.name,
                    "job_id": str(job.job_id),
                    "executor": kind,
                    "submitted_at": utc_now(),
                    "host": socket.gethostname(),
                    "pid": os.getpid(),
                    "job_runs": [g.name for g in group],
                    **_log_paths(job),
                },
            )
        jobs.append((group, job))

    def cancel(signum, _frame):
        # Snakemake stops a job with SIGTERM: take the submitted jobs down too
        # (a local job's controller outlives us otherwise).
        for group, job in jobs:
            job.cancel(check=False)
            for d in group:
                (d / rundir.SUBMITTED).unlink(missing_ok=True)
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, cancel)
    signal.signal(signal.SIGINT, cancel)
    if not jobs:
        return 0
    _wait([j for _, j in jobs], kind)

    failed = 0
    for group, job in jobs:
        logs = _log_paths(job)
        try:
            outcomes = _result(job, kind)
        except Exception as e:  # the job itself failed: every run of it without a result did
            outcomes = [
                {"run_dir": str(d.resolve()), "summary": s}
                if (s := rundir.finished_summary(d)) is not None
                else {"run_dir": str(d.resolve()), "error": f"{type(e).__name__}: {str(e)[-2000:]}", "exc": e}
                for d in group
            ]
        for d, outcome in zip(group, outcomes):
            (d / rundir.SUBMITTED).unlink(missing_ok=True)
            if "summary" in outcome:
                summary = outcome["summary"]
                print(
                    f"[{d.name}] {summary['status']}: final eval loss {summary.get('final_eval_loss')} (job {job.job_id}, {kind})"
                )
                continue
            failed += 1
            error = outcome["error"]
            atomic.write_json(
                d / rundir.FAILURE,
                {
                    "run_id": d.name,
                    "job_id": str(job.job_id),
                    "executor": kind,
                    "failed_at": utc_now(),
                    "error": error[-2000:],
                    **logs,
                },
            )
            print(
                f"[{d.name}] FAILED (job {job.job_id}, {kind}): {_last_error(outcome.get('exc') or RuntimeError(error), logs['stderr'])}\n"
                f"  job log: {logs['stderr']}\n  job stdout: {logs['stdout']}",
                file=sys.stderr,
            )
    return 1 if failed else 0
