"""The run directory `results/<study>/runs/<run_id>/`: its files, the
statuses a run ends in, and reading them back.

    config.json       the resolved run config plus its run_id (written first)
    metrics.parquet   one row per step
    summary.json      status, final losses, counts, provenance (written last)
    checkpoint.pt     while the run trains
    train.log         the trainer's log
    submitted.json    held by `rlrs submit` while the run's job is in flight
    failure.json      written by `rlrs submit` when the job failed (Snakemake
                      deletes a failed job's summary.json; the failure is kept here)
    reused.json       the run was copied from another study's finished run
                      instead of trained (rlrs.study.reuse): from where

rlrs.train writes the run's own files; rlrs.launch the markers; rlrs.study.reuse
a copy's files; rlrs.db, the study's status and the search read them through
this module.
"""

from __future__ import annotations

import json
from pathlib import Path

CONFIG = "config.json"
METRICS = "metrics.parquet"
SUMMARY = "summary.json"
CHECKPOINT = "checkpoint.pt"
TRAIN_LOG = "train.log"
SUBMITTED = "submitted.json"
FAILURE = "failure.json"
REUSED = "reused.json"

STATUSES = ("completed", "diverged", "failed")  # summary.json `status`
TERMINAL = ("completed", "diverged")  # a run in one of these is done: a result, not a failure

# `rlrs status`: a run directory's state as seen from outside.
STATES = ("done", "diverged", "failed", "running", "missing")


def read_summary(run_dir: Path) -> dict | None:
    """summary.json as a dict, or None when absent or not valid JSON."""
    try:
        return json.loads((Path(run_dir) / SUMMARY).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def finished_summary(run_dir: Path) -> dict | None:
    """The run's summary if it already ended as a result (completed or diverged)."""
    summary = read_summary(run_dir)
    return summary if summary is not None and summary.get("status") in TERMINAL else None


def run_state(run_dir: Path) -> str:
    """done | diverged | failed | running | missing, from the run directory.

    `summary.json` decides when present. Without it, `failure.json` (written by
    `rlrs submit` when a job fails; Snakemake deletes the summary of a failed
    job) means failed, and `submitted.json` (held while `rlrs submit` waits)
    or a checkpoint means running (or interrupted while running)."""
    run_dir = Path(run_dir)
    if (run_dir / SUMMARY).exists():
        summary = read_summary(run_dir)
        if summary is None:
            return "failed"
        return {"completed": "done", "diverged": "diverged"}.get(summary.get("status"), "failed")
    if (run_dir / FAILURE).exists():
        return "failed"
    if (run_dir / SUBMITTED).exists() or (run_dir / CHECKPOINT).exists():
        return "running"
    return "missing"


def read_score(run_dir: Path, score: str) -> tuple[float | None, str]:
    """(score or None, status) of a finished run; None = diverged or not finite."""
    summary = json.loads((Path(run_dir) / SUMMARY).read_text())
    value = summary.get(score) if summary.get("status") == "completed" else None
    if value is None or value != value or value in (float("inf"), float("-inf")):
        return None, summary.get("status")
    return float(value), summary["status"]
