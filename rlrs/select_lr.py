"""Stage 1 of a staged study: choose each (size, arm)'s base lr on the
selection seeds, bracketing it (`rlrs select STUDY.yaml`).

Every selection cell (rlrs.study.selection) starts from its first grid; each
round asks rlrs.study.bracketing.select_lr what to run next for every cell
not yet decided, and submits the new runs of ALL cells together through the
study's executor, so that they train in parallel (local: grouped into at
most `cores` jobs). A cell is done when its best lr is interior (bracketed)
or when `max_extra_points` points beyond the first grid have not bracketed
it (cap reached: unbracketed), or failed when no lr trained (every one
diverged, the grid walked down to the cap: `failed`, and the study leaves
that size out of stage 2 instead of waiting for it). Each cell's result goes atomically to
results/<study>/select/<size>.<arm>.json after every round ("running") and
at the end ("done"); `rlrs collect` loads the finished ones into the table
`lr_selection`.

The selection is its own checkpoint: its decisions are a pure function of
the finished runs, and every candidate is an ordinary run directory
(results/<study>/runs/<id>/), so a restarted selection finds its finished
runs there (rlrs.launch.submit skips them; with `reuse_runs_from`, a run
finished in another study is copied from there) and decides the same. A run that
fails (not diverges) stops the selection with its run ids; rerunning
retries it. A diverged run counts as +inf loss.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from rlrs import atomic, paths, rundir
from rlrs.errors import ConfigError
from rlrs.executor import executor_settings
from rlrs.launch import copy_reused, local_runs_per_job, submit
from rlrs.study import reuse
from rlrs.study.bracketing import select_lr
from rlrs.study.searches import load_state as load_tune_state
from rlrs.study.selection import RESULT_VERSION, Cell, cells, is_failed, read_result
from rlrs.study.validate import is_staged
from rlrs.tune import Lock

SCORE = "final_eval_loss"


class SelectError(RuntimeError):
    """A selection cannot go on (a run failed, not diverged)."""


def _document(cell: Cell, results: dict, runs: dict, decision: dict) -> dict:
    """The cell's result document (the interface of the select files)."""
    done = decision["action"] == "done"
    return {
        "version": RESULT_VERSION,
        "status": "done" if done else "running",
        "study": cell.study,
        "size": cell.size,
        "family": cell.family,
        "arm": cell.arm,
        "centre_lr": cell.centre_lr,
        "factor": cell.factor,
        "selection_seeds": cell.selection_seeds,
        "max_extra_points": cell.max_extra_points,
        "points": [
            {
                "lr": lr,
                "lr_factor": cell.lr_factor(lr),
                "runs": {str(s): runs[(lr, s)] for s in cell.selection_seeds},
                "losses": {str(s): (None if math.isinf(v) else v) for s, v in results[lr].items()},
            }
            for lr in sorted(results)
        ],
        "chosen_lr": decision["lr"],
        "bracketed": decision["bracketed"],
        "cap_reached": decision["cap_reached"],
        "failed": decision["failed"],
        "n_extra": decision["n_extra"],
        "ranked_on": decision["ranked_on"],
        "note": decision["note"],
        "digest": cell.digest(),
    }


def run_selection(
    todo: list[Cell], runs_dir: Path, settings: dict, kind: str, cores: int, log=print, reuse_from=()
) -> list[dict]:
    """Rounds of every cell's selection until each is done; returns the result documents."""
    results: dict[str, dict[float, dict[int, float]]] = {c.key: {} for c in todo}
    runs: dict[str, dict[tuple[float, int], str]] = {c.key: {} for c in todo}
    docs: dict[str, dict] = {}
    active = list(todo)
    for rnd in range(1, 1 + max(c.max_extra_points for c in todo) + 2):
        asks = {}
        for c in active:
            decision = select_lr(c.grid, c.factor, results[c.key], c.selection_seeds, c.max_extra_points)
            if decision["action"] == "done":
                docs[c.key] = _document(c, results[c.key], runs[c.key], decision)
                atomic.write_json(c.result_path(runs_dir.parent), docs[c.key])
                chosen = decision["lr"]
                outcome = (
                    "FAILED, no lr to measure at: the size is left out of stage 2"
                    if decision["failed"]
                    else f"lr {chosen:g} ({'bracketed' if decision['bracketed'] else 'UNBRACKETED'}; "
                    f"{decision['n_extra']} extra point(s))"
                )
                log(f"[select {c.key}] done: {outcome}" + (f"; {decision['note']}" if decision["note"] else ""))
            else:
                asks[c.key] = (c, decision)
        active = [c for c, _ in asks.values()]
        if not active:
            return [docs[c.key] for c in todo]
        configs = {}
        for c, decision in asks.values():
            for lr in decision["run"]:
                for seed in c.selection_seeds:
                    rid, resolved = c.candidate(lr, seed)
                    runs[c.key][(lr, seed)] = rid
                    configs[rid] = resolved
            log(f"[select {c.key}] round {rnd}: lr {', '.join(f'{x:g}' for x in decision['run'])}")
        dirs = [runs_dir / rid for rid in configs]
        copy_reused(dirs, configs, reuse_from)  # first, so that the jobs share the cores among the runs left
        left = [d for d in dirs if rundir.finished_summary(d) is None]
        per_job = local_runs_per_job(len(left), kind, cores)
        if submit(dirs, configs, settings, kind, runs_per_job=per_job, reuse_from=reuse_from) != 0:
            failed = [d.name for d in dirs if rundir.finished_summary(d) is None]
            raise SelectError(
                f"selection run(s) failed: {', '.join(failed) or '?'} (see failure.json in their run "
                f"directories under {runs_dir}); rerun `rlrs select` to retry them"
            )
        for c, decision in asks.values():
            for lr in decision["run"]:
                losses = {}
                for seed in c.selection_seeds:
                    score, _ = rundir.read_score(runs_dir / runs[c.key][(lr, seed)], SCORE)
                    losses[seed] = math.inf if score is None else score
                results[c.key][lr] = losses
            running = select_lr(c.grid, c.factor, results[c.key], c.selection_seeds, c.max_extra_points)
            if running["action"] == "run":
                atomic.write_json(c.result_path(runs_dir.parent), _document(c, results[c.key], runs[c.key], running))
    raise AssertionError("the selection did not end within its rounds")  # select_lr ends by construction


def select(study: dict, executor: str | None = None, cores: int | None = None, log=print) -> list[dict]:
    """Run (or resume, or skip) every selection cell of a staged study; returns the results."""
    if not is_staged(study):
        raise ConfigError("selection_seeds", "the study is not staged: give selection_seeds (see README: Stages)")
    tune_state = load_tune_state(study) if study.get("tune") else None
    if tune_state is not None and tune_state.pending:
        raise ConfigError(
            "tune",
            f"the tuning searches of the {', '.join(sorted(tune_state.pending))} family are not done: "
            "run `rlrs tune --search-only` first (the selection is centred on the tuned lr)",
        )
    todo = cells(study, tune_state.tuned if tune_state is not None else None)
    settings = executor_settings(study)
    kind = executor or settings["kind"]
    root = paths.results_dir(study["study"])
    out, pending = {}, []
    with Lock(paths.select_dir(study["study"]) / ".lock", "rlrs select"):
        for c in todo:
            doc = read_result(c)
            if doc is not None:
                log(
                    f"[select {c.key}] already done: "
                    + ("FAILED (no lr trained)" if is_failed(doc) else f"lr {doc['chosen_lr']}")
                )
                out[c.key] = doc
            else:
                pending.append(c)
        if pending:
            docs = run_selection(
                pending,
                root / "runs",
                settings,
                kind,
                cores or os.cpu_count() or 1,
                log=log,
                reuse_from=reuse.sources(study),
            )
            out.update({d["size"] + "." + d["arm"]: d for d in docs})
    return [out[c.key] for c in todo]
