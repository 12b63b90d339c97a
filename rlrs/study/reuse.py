"""Cross-study run reuse: a study's `reuse_runs_from` names other studies
under the same results root whose finished runs it may copy instead of
training them again.

Run ids are content-addressed (rlrs.config.run_id), so a run of study B with
the id of a run that finished in study A computes exactly what A's run
computed. Before B trains a run, every path that trains runs (rlrs.launch.submit:
Snakemake's train rules, `rlrs tune`, `rlrs select`) asks `copy_finished()`:
the first listed study holding a usable copy gives its compact outputs
(metrics.parquet, config.json with B's labels, summary.json written last),
each written atomically into B's run directory, with `reused.json` saying
where they came from; nothing trains. Checkpoints and logs are not copied.

A copy is usable (`check()`) when the source run directory holds a
summary.json that ended as a result (completed or diverged) for this run id,
a config.json whose run id is this one and whose identity (the resolved
config minus labels and operational fields, rlrs.config.identity) is the
planned run's, and, for a completed run, all its steps and a whole
metrics.parquet (the Parquet magic at both ends). Anything else (a failed, an
unfinished, a corrupt or a different run) is not reused: B trains the run.

`rlrs plan` (rlrs.study.estimate) counts a run found here as costing nothing.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

from rlrs import atomic, paths, rundir
from rlrs.config import identity, run_id
from rlrs.provenance import utc_now

KEY = "reuse_runs_from"
PARQUET_MAGIC = b"PAR1"
# What a copy takes from the source run directory (config.json is rewritten
# with this study's labels); summary.json goes last: its presence says done.
COPIED = (rundir.METRICS, rundir.CONFIG, rundir.SUMMARY)


def sources(study: dict) -> list[str]:
    """The studies a study reuses runs from, in the order they are searched."""
    return list(study.get(KEY) or [])


def results_root_of(run_dir: Path) -> Path:
    """The results root above results/<study>/runs/<run_id>/ (where the
    source studies are looked for: beside this run's study)."""
    return Path(run_dir).resolve().parent.parent.parent


@dataclass(frozen=True)
class Source:
    """A usable finished copy of a run in another study: its bytes, read once."""

    study: str
    run_dir: Path
    files: dict[str, bytes]  # file name -> content, as checked (metrics.parquet only when read)
    config: dict
    summary: dict


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError):
        return None


def _json(data: bytes | None) -> dict | None:
    if data is None:
        return None
    try:
        obj = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return obj if isinstance(obj, dict) else None


def _ends(path: Path) -> bytes | None:
    """The first and last 4 bytes of a file (where Parquet puts its magic), or None."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
            f.seek(0, 2)
            if f.tell() < 12:
                return head
            f.seek(-4, 2)
            return head + f.read(4)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError):
        return None


def check(study: str, src_dir: Path, rid: str, planned: dict, read: bool = False) -> tuple[Source | None, str]:
    """(the usable copy, "") or (None, why not) for run `rid` in `src_dir`,
    study `study`'s. read: hold the metrics file's bytes too (for a copy;
    otherwise only its two ends are read)."""
    src_dir = Path(src_dir)
    files = {name: _read(src_dir / name) for name in (rundir.CONFIG, rundir.SUMMARY)}
    files[rundir.METRICS] = _read(src_dir / rundir.METRICS) if read else _ends(src_dir / rundir.METRICS)
    summary, config = _json(files[rundir.SUMMARY]), _json(files[rundir.CONFIG])
    if summary is None:
        return None, "no readable summary.json (not finished)"
    if summary.get("status") not in rundir.TERMINAL:
        return None, f"status {summary.get('status')!r} (reused: {', '.join(rundir.TERMINAL)})"
    if summary.get("run_id") != rid:
        return None, f"summary.json is of run {summary.get('run_id')!r}"
    if config is None:
        return None, "no readable config.json"
    try:
        same = config.get("run_id") == rid and run_id(config) == rid and identity(config) == identity(planned)
    except (KeyError, TypeError, AttributeError):
        same = False
    if not same:
        return None, "config.json is not this run's (its run id or resolved settings differ)"
    metrics = files[rundir.METRICS]
    whole = metrics is not None and len(metrics) >= 8 and metrics[:4] == metrics[-4:] == PARQUET_MAGIC
    if summary["status"] == "completed":
        loss = summary.get("final_eval_loss")
        if not whole:
            return None, "completed, but metrics.parquet is missing or truncated"
        if summary.get("steps_done") != planned["train"]["steps"]:
            return None, f"completed after {summary.get('steps_done')} of {planned['train']['steps']} steps"
        if not isinstance(loss, (int, float)) or not math.isfinite(loss):
            return None, f"completed without a final eval loss ({loss!r})"
    elif metrics is not None and not whole:
        return None, "metrics.parquet is truncated"
    if metrics is None or not read:
        del files[rundir.METRICS]
    return Source(study, src_dir, files, config, summary), ""


def find(rid: str, planned: dict, results_root: Path, studies: list[str], read: bool = False) -> Source | None:
    """The first listed study's usable copy of run `rid`, or None (read: see check)."""
    for study in studies:
        src, _ = check(study, Path(results_root) / study / paths.RUNS_DIR / rid, rid, planned, read)
        if src is not None:
            return src
    return None


def copy_finished(run_dir: Path, planned: dict, studies: list[str]) -> dict | None:
    """Copy the run's finished outputs from the first listed study that has
    them into `run_dir` (each file atomically, summary.json last) and return
    the summary; None (and nothing written) when no study has a usable copy."""
    run_dir = Path(run_dir)
    if not studies:
        return None
    src = find(run_dir.name, planned, results_root_of(run_dir), studies, read=True)
    if src is None:
        return None
    run_dir.mkdir(parents=True, exist_ok=True)
    upstream = atomic.read_json(src.run_dir / rundir.REUSED) or {}
    if rundir.METRICS in src.files:
        atomic.write_bytes(run_dir / rundir.METRICS, src.files[rundir.METRICS])
    else:  # a diverged run that stopped before writing any: none here either
        (run_dir / rundir.METRICS).unlink(missing_ok=True)
    # This study's labels (size, arm, sweep, tags); the rest as the run was trained.
    atomic.write_json(run_dir / rundir.CONFIG, {**src.config, "meta": planned.get("meta")})
    atomic.write_json(
        run_dir / rundir.REUSED,
        {
            "run_id": run_dir.name,
            "from_study": src.study,
            "from_run_dir": f"{src.study}/{paths.RUNS_DIR}/{run_dir.name}",
            "trained_in": upstream.get("trained_in") or src.study,
            "copied_at": utc_now(),
            # of each file as read from the source (config.json before its labels were replaced)
            "sha256": {name: hashlib.sha256(data).hexdigest() for name, data in sorted(src.files.items())},
        },
    )
    for stale in (rundir.CHECKPOINT, rundir.FAILURE):  # a finished run holds neither
        (run_dir / stale).unlink(missing_ok=True)
    atomic.write_bytes(run_dir / rundir.SUMMARY, src.files[rundir.SUMMARY])
    return src.summary
