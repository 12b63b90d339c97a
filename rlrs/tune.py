"""Tune small, transfer large: the greedy local search of the spec (section 4).

`rlrs tune STUDY.yaml` searches, for every (tuning size, arm) of the study's
`tune:` block, then transfers: the tuned settings replace the arm's settings
at every size of that model family (dense or MoE) in the study's ordinary
sweeps (main, lr, ladder, ...), which Snakemake then trains, collects and
reports.

The search, per (size, arm):

- parameters: the globals lr, init_scale, final_lr_fraction, weight_decay
  (space `global`, the baseline's), plus `<component>.start` and
  `<component>.end` of every component the model has, norm excluded (space
  `relative`); the study may restrict them (`tune.parameters`).
- start from the arm's own settings at the tuning size; score = a summary.json
  field (train_loss_last100 by default: the mean train loss of the last 100
  steps), lower is better; a diverged run scores +inf.
- each pass visits the parameters in a seeded random order; for parameter p
  it launches one run per factor (0.2, 2/3, 3/2, 5) in parallel through the
  study's executor and accepts the best candidate if it beats the best score
  so far (strictly; ties go to the earlier factor).
- stop after a pass without improvement, after `max_passes`, or when the next
  batch would exceed `max_runs` (distinct runs, the start run included).

Every candidate is an ordinary run with an id in results/<study>/runs/<id>/,
so the search is its own checkpoint: a restarted search recomputes the same
decisions (seeded order, rounded values, hence the same run ids) and finds
every finished run already there (rlrs.launch.submit skips a terminal run),
or, with the study's `reuse_runs_from`, in another study that ran the same
search (the run is copied: replaying a finished search trains nothing).
What is spent is counted from the search's decisions, never from what is on
disk, so an interrupted-then-resumed search and an uninterrupted one write the
same result. The result, trajectory and final settings, goes atomically to
results/<study>/tune/<size>.<arm>.json; `rlrs collect` loads it into the
tables `tune_trajectory` and `tuned`. The searches as data (their
definition, results and the state the plan needs) are rlrs.study.searches;
what a search may change is rlrs.tunables.
"""

from __future__ import annotations

import fcntl
import os
import random
import sys
from pathlib import Path

from rlrs import atomic, paths, rundir, tags
from rlrs.errors import ConfigError
from rlrs.executor import executor_settings
from rlrs.launch import copy_reused, local_runs_per_job, submit
from rlrs.study import reuse
from rlrs.study.searches import RESULT_VERSION, Search, read_result, searches
from rlrs.tunables import rounded


class TuneError(RuntimeError):
    """A search cannot go on (a candidate run failed, not diverged)."""


def _better(a: float | None, b: float | None) -> bool:
    """a strictly better than b; None (diverged) is worst."""
    return a is not None and (b is None or a < b)


class Runner:
    """Trains a batch of a search's candidates through the study's executor."""

    def __init__(
        self, runs_dir: Path, settings: dict, kind: str, reuse_from: list[str] | tuple = (), cores: int | None = None
    ):
        self.runs_dir, self.settings, self.kind, self.reuse_from = runs_dir, settings, kind, list(reuse_from)
        self.cores = cores or os.cpu_count() or 1

    def __call__(self, configs: dict[str, dict]) -> None:
        dirs = [self.runs_dir / rid for rid in configs]
        # The candidates of a step run in parallel, whatever executor.runs_per_job
        # says: one job each on a cluster, at most `cores` jobs at once locally. A
        # candidate finished in a study of reuse_runs_from is copied first (a
        # search replayed there costs nothing).
        copy_reused(dirs, configs, self.reuse_from)
        per_job = local_runs_per_job(sum(rundir.finished_summary(d) is None for d in dirs), self.kind, self.cores)
        code = submit(dirs, configs, self.settings, self.kind, runs_per_job=per_job, reuse_from=self.reuse_from)
        if code != 0:
            failed = [d.name for d in dirs if rundir.finished_summary(d) is None]
            raise TuneError(
                f"candidate run(s) failed: {', '.join(failed) or '?'} (see failure.json in their "
                f"run directories under {self.runs_dir}); rerun `rlrs tune` to retry them"
            )


def run_search(search: Search, runner: Runner, runs_dir: Path, log=print) -> dict:
    """The greedy local search; returns (and writes) its result document."""
    current = dict(search.start)
    runs: dict[str, dict] = {}  # run_id -> settings, in order of first request
    scores: dict[str, tuple[float | None, str]] = {}
    trajectory: list[dict] = []

    def candidate(p: int, name: str | None, factor: float | None) -> dict:
        """One candidate: the current settings with `name` scaled by `factor`."""
        value = rounded(current[name] * factor) if name is not None else None
        settings = {**current, name: value} if name is not None else dict(current)
        rid, resolved = search.candidate(settings)
        resolved["meta"] = {
            "study": search.study,
            "size": search.size,
            "arm": search.arm,
            "sweep": tags.TUNE,
            "tags": tags.tune(p, name, factor),
        }
        return {
            "pass": p,
            "parameter": name,
            "value": value,
            "previous": current.get(name),
            "factor": factor,
            "settings": settings,
            "run_id": rid,
            "config": resolved,
        }

    def evaluate(batch: list[dict]) -> None:
        """Train the batch's new run ids (in parallel), then read every score."""
        todo = {}
        for c in batch:
            if c["run_id"] not in runs:
                runs[c["run_id"]] = c["settings"]
                todo[c["run_id"]] = c["config"]
        if todo:
            runner(todo)
        for c in batch:
            if c["run_id"] not in scores:
                scores[c["run_id"]] = rundir.read_score(runs_dir / c["run_id"], search.score)
            c["score"], c["status"] = scores[c["run_id"]]

    def record(batch: list[dict], accepted: dict | None, best: float | None) -> None:
        for c in batch:
            trajectory.append(
                {
                    "step": len(trajectory),
                    "pass": c["pass"],
                    "parameter": c["parameter"],
                    "value": c["value"],
                    "previous": c["previous"],
                    "factor": c["factor"],
                    "run_id": c["run_id"],
                    "score": c["score"],
                    "status": c["status"],
                    "accepted": c is accepted,
                    "best_score": best,
                    "runs_spent": len(runs),
                }
            )

    def write(status: str, stop: str | None, best: float | None, best_run: str | None, passes: int) -> dict:
        doc = {
            "version": RESULT_VERSION,
            "status": status,
            "stop_reason": stop,
            "study": search.study,
            "size": search.size,
            "family": search.family,
            "arm": search.arm,
            "space": search.space,
            "digest": search.digest(),
            "search": {
                k: getattr(search, k) for k in ("parameters", "factors", "max_passes", "max_runs", "score", "seed")
            },
            "passes": passes,
            "runs_spent": len(runs),
            "best_score": best,
            "best_run_id": best_run,
            "start": search.start,
            "final": current,
            "runs": runs,
            "trajectory": trajectory,
        }
        atomic.write_json(search.result_path(runs_dir.parent), doc)
        return doc

    start = candidate(0, None, None)
    evaluate([start])
    best, best_run = start["score"], start["run_id"]
    record([start], start, best)
    log(f"[tune {search.key}] start: {search.score} {best} ({start['run_id']})")
    stop, passes = "max_passes", 0
    for p in range(1, search.max_passes + 1):
        passes = p
        order = list(search.parameters)
        random.Random(f"{search.seed}-{search.size}-{search.arm}-{p}").shuffle(order)
        improved = out_of_budget = False
        for name in order:
            batch = [candidate(p, name, f) for f in search.factors]
            # The budget counts distinct runs the search asked for (a revisited
            # point is free): decided from the search alone, never from disk.
            new = {c["run_id"] for c in batch} - set(runs)
            if search.max_runs is not None and len(runs) + len(new) > search.max_runs:
                out_of_budget = True
                break
            evaluate(batch)
            # Best candidate; ties go to the earlier factor (min keeps the first).
            top = min(batch, key=lambda c: (c["score"] is None, c["score"] if c["score"] is not None else 0.0))
            accepted = top if _better(top["score"], best) else None
            if accepted is not None:
                current[name] = accepted["value"]
                best, best_run, improved = accepted["score"], accepted["run_id"], True
            record(batch, accepted, best)
            log(
                f"[tune {search.key}] pass {p} {name}: "
                + ", ".join(
                    f"x{c['factor']:.3g} {c['score'] if c['score'] is None else round(c['score'], 4)}" for c in batch
                )
                + (f" -> {name} = {current[name]:g}" if accepted else " (kept)")
                + f"; {len(runs)} runs"
            )
            write("running", None, best, best_run, p)
        if out_of_budget:
            stop = "max_runs"
            break
        if not improved:
            stop = "converged"
            break
    doc = write("done", stop, best, best_run, passes)
    log(f"[tune {search.key}] done ({stop}): {search.score} {best} after {passes} pass(es), {len(runs)} runs")
    return doc


class Lock:
    """One search process per study at a time (two would train the same run
    directories at once). An flock: the kernel releases it when the holder
    dies, even by SIGKILL."""

    def __init__(self, path: Path, command: str = "rlrs tune"):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.fd, self.command = path, None, command

    def __enter__(self):
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            raise TuneError(f"another `{self.command}` holds {self.path}; wait for it to finish") from None
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


def tune(study: dict, executor: str | None = None, log=print, cores: int | None = None) -> list[dict]:
    """Run (or resume, or skip) every search of the study; returns the results."""
    todo = searches(study)
    if not todo:
        raise ConfigError("tune", "the study has no tune block (see README: Tune small, transfer large)")
    settings = executor_settings(study)
    kind = executor or settings["kind"]
    root = paths.results_dir(todo[0].study)
    runner = Runner(root / "runs", settings, kind, reuse.sources(study), cores)
    out = []
    with Lock(paths.tune_dir(todo[0].study) / ".lock"):
        for s in todo:
            doc = read_result(s)
            if doc is not None:
                log(f"[tune {s.key}] already done ({doc['stop_reason']}): {s.score} {doc['best_score']}")
            else:
                doc = run_search(s, runner, root / "runs", log=log)
            out.append(doc)
    return out


def transfer_command(study_path: Path, cores: int | None = None) -> list[str]:
    """The command that trains, collects and reports the study with the tuned
    settings: the workflow's own targets, so `rlrs tune` and `snakemake`
    share one path. The snakemake of the Python that runs us, never
    whatever PATH holds."""
    cores = cores or os.cpu_count() or 1
    return [
        sys.executable,
        "-m",
        "snakemake",
        "-s",
        str(paths.SNAKEFILE),
        "-d",
        os.getcwd(),
        "-c",
        str(cores),
        "--configfile",
        str(Path(study_path).resolve()),
    ]
