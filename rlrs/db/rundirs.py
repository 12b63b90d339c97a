"""Reading one run directory (rlrs.rundir) into a `runs` row: every value
checked against its column's type, so a corrupt or incomplete run is skipped
with a reason instead of aborting the collect."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlrs import rundir
from rlrs.components import SCHEDULED
from rlrs.db.connect import first_line
from rlrs.db.schema import METRIC_COLUMNS, REQUIRED_METRICS, RUN_COLUMNS, SCHEMA_VERSION


class SkipRun(Exception):
    """A run directory that cannot be ingested (incomplete or corrupt)."""


@dataclass(frozen=True)
class Skipped:
    run_dir: Path
    reason: str


@dataclass(frozen=True)
class RunRow:
    run_dir: Path
    row: dict  # one `runs` row, values already of the column's type
    metrics: Path | None  # metrics.parquet, None when a failed run wrote none
    metric_columns: frozenset[str]  # the columns metrics.parquet has

    @property
    def run_id(self) -> str:
        return self.row["run_id"]


def _load_json(path: Path) -> dict:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise SkipRun(f"incomplete: no {path.name}") from None
    except OSError as e:
        raise SkipRun(f"corrupt: cannot read {path.name} ({e})") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise SkipRun(f"corrupt: {path.name} is not valid JSON ({e})") from None
    if not isinstance(obj, dict):
        raise SkipRun(f"corrupt: {path.name} is not a JSON object")
    return obj


def _get(d: Mapping, dotted: str, source: str, required: bool = True) -> Any:
    """d["a"]["b"] for "a.b"; a missing required field makes the run corrupt."""
    cur: Any = d
    for key in dotted.split("."):
        if not isinstance(cur, Mapping) or key not in cur:
            if required:
                raise SkipRun(f"corrupt: {source} has no {dotted}")
            return None
        cur = cur[key]
    return cur


def _coerce(value: Any, sql_type: str, field: str) -> Any:
    """Check one value against its column type, so a bad value skips its run
    here instead of aborting the whole transaction later."""
    if value is None:
        return None
    base = sql_type.split()[0]
    ok = True
    if base == "BIGINT":
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif base == "DOUBLE":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif base == "BOOLEAN":
        ok = isinstance(value, bool)
    elif base == "VARCHAR":
        if field == "job_id" and isinstance(value, int):  # Slurm ids may arrive as numbers
            value = str(value)
        ok = isinstance(value, str)
    elif base == "JSON":
        try:
            value = json.dumps(value, sort_keys=True, allow_nan=False)
        except (TypeError, ValueError):
            ok = False
    elif base == "TIMESTAMP":
        try:
            value = dt.datetime.fromisoformat(value) if isinstance(value, str) else value
            ok = isinstance(value, dt.datetime)
        except ValueError:
            ok = False
        if ok and value.tzinfo is not None:  # stored as naive UTC (see the schema)
            value = value.astimezone(dt.timezone.utc).replace(tzinfo=None)
    if not ok:
        raise SkipRun(f"corrupt: {field} should be {_EXPECTED[base]}, got {value!r}")
    return value


_EXPECTED = {
    "BIGINT": "an integer",
    "DOUBLE": "a number",
    "BOOLEAN": "true or false",
    "VARCHAR": "a string",
    "JSON": "JSON data without NaN or infinity",
    "TIMESTAMP": "an ISO 8601 date-time",
}


def _read_run_dir(run_dir: Path, study: str | None) -> RunRow:
    """Validate one run directory and build its `runs` row, or raise SkipRun."""
    if not (run_dir / rundir.CONFIG).exists():
        raise SkipRun(f"not a run directory: no {rundir.CONFIG}")
    config = _load_json(run_dir / rundir.CONFIG)
    summary = _load_json(run_dir / rundir.SUMMARY)
    run_id = _get(config, "run_id", "config.json")
    if summary.get("run_id") != run_id:
        raise SkipRun(
            f"corrupt: run_id mismatch: config.json says {run_id!r}, summary.json says {summary.get('run_id')!r}"
        )
    status = summary.get("status")
    if status not in rundir.STATUSES:
        raise SkipRun(f"incomplete: status {status!r} (ingested: {', '.join(rundir.STATUSES)})")

    metrics = run_dir / rundir.METRICS
    metric_columns: frozenset[str] = frozenset()
    if not metrics.exists():
        if status == "completed":
            raise SkipRun("corrupt: completed but no metrics.parquet")
        metrics = None  # a failed or diverged run may have stopped before writing any
    else:
        metric_columns = _check_metrics_schema(metrics)

    def c(path: str, required: bool = True):
        return _get(config, path, "config.json", required)

    moe = c("model.moe", required=False)
    if moe is not None and not isinstance(moe, Mapping):
        raise SkipRun(f"corrupt: config.json model.moe should be a mapping or null, got {moe!r}")
    moe = moe or {}
    mults = c("schedule.multipliers")
    if not isinstance(mults, Mapping):
        raise SkipRun(f"corrupt: config.json schedule.multipliers should be a mapping, got {mults!r}")
    meta = config.get("meta") or {}
    row = {
        "run_id": run_id,
        "study": study if study is not None else meta.get("study"),
        "size": meta.get("size"),
        "arm": meta.get("arm"),
        "sweep": meta.get("sweep"),
        "tags": meta.get("tags") or {},
        **{
            k: c(f"model.{k}")
            for k in ("d_model", "n_layers", "n_heads", "seq_len", "d_ff", "vocab_size", "init_scale")
        },
        "moe": bool(moe),
        **{k: moe.get(k) for k in ("n_experts", "top_k", "granularity", "capacity_factor")},
        "lr": c("optim.lr"),
        "weight_decay": c("optim.weight_decay"),
        "final_lr_fraction": c("schedule.final_lr_fraction"),
        "warmup_steps": c("schedule.warmup_steps"),
        "schedule_shape": c("schedule.shape"),
        "multipliers": mults,
        **{
            f"mult_{comp}_{end}": _get(mults, f"{comp}.{end}", "config.json schedule.multipliers", required=False)
            for comp in SCHEDULED
            for end in ("start", "end")
        },
        "batch_size": c("train.batch_size"),
        "steps": c("train.steps"),
        "seed": c("seed"),
        "corpus": c("data.corpus"),
        "tokenizer": c("data.tokenizer"),
        **{
            k: summary.get(k)
            for k in (
                "steps_done",
                "tokens",
                "params_total",
                "params_active",
                "params_nonembedding",
                "params_active_nonembedding",
                "params_by_component",
                "status",
                "final_eval_loss",
                "final_eval_bpb",
                "train_loss_last100",
                "wall_time_s",
                "step_time_s",
                "cpu_time_s",
                "step_cpu_time_s",
                "executor",
                "job_id",
                "host",
                "git_commit",
                "versions",
                "error",
                "started_at",
                "finished_at",
            )
        },
        "config": config,
        "reused_from": _reused_from(run_dir),
        "run_dir": str(run_dir.resolve()),
        "source_sha256": None,  # below
        "ingested_at": None,  # set once per collect
    }
    row = {name: _coerce(row[name], sql_type, name) for name, sql_type in RUN_COLUMNS.items()}
    row["source_sha256"] = _fingerprint(run_dir, row["study"], metrics)
    return RunRow(run_dir, row, metrics, metric_columns)


def _reused_from(run_dir: Path) -> str | None:
    """The study a copied run came from (rlrs.study.reuse), None for a run trained here."""
    if not (run_dir / rundir.REUSED).exists():
        return None
    return _get(_load_json(run_dir / rundir.REUSED), "from_study", rundir.REUSED)


def _fingerprint(run_dir: Path, study: str | None, metrics: Path | None) -> str:
    """SHA-256 of everything a run's rows are made from (its files, where they
    are, the study label), so an unchanged run need not be rewritten."""
    h = hashlib.sha256(json.dumps([SCHEMA_VERSION, str(run_dir.resolve()), study]).encode())
    reused = run_dir / rundir.REUSED
    for path in (run_dir / rundir.CONFIG, run_dir / rundir.SUMMARY, metrics, reused if reused.exists() else None):
        if path is not None:
            with open(path, "rb") as f:
                h.update(hashlib.file_digest(f, "sha256").digest())
    return h.hexdigest()


def _check_metrics_schema(path: Path) -> frozenset[str]:
    """Read the parquet footer: catches truncated or non-parquet files and
    missing or non-numeric columns before the bulk read. Returns the column names."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
    except (pa.ArrowException, OSError) as e:
        raise SkipRun(f"corrupt: metrics.parquet is unreadable ({first_line(e)})") from None
    missing = [c for c in REQUIRED_METRICS if c not in schema.names]
    if missing:
        raise SkipRun(f"corrupt: metrics.parquet lacks column(s) {', '.join(missing)}")
    for name in METRIC_COLUMNS:
        if name not in schema.names:
            continue
        t = schema.field(name).type
        numeric = pa.types.is_integer(t) if name == "step" else (pa.types.is_integer(t) or pa.types.is_floating(t))
        if not (numeric or pa.types.is_null(t)):
            raise SkipRun(f"corrupt: metrics.parquet column {name} has type {t}, expected a number")
    return frozenset(schema.names)


def read_run_dirs(
    run_dirs: Iterable[Path | str], study: str | None, progress: bool
) -> tuple[list[RunRow], list[Skipped]]:
    """Read and validate every run directory; the unusable ones come back as Skipped."""
    from tqdm import tqdm

    runs: list[RunRow] = []
    skipped: list[Skipped] = []
    first_dir: dict[str, Path] = {}
    # disable=None: a bar only on a terminal, never in logs
    for d in tqdm([Path(d) for d in run_dirs], desc="reading runs", unit="run", disable=None if progress else True):
        try:
            run = _read_run_dir(d, study)
        except SkipRun as e:
            skipped.append(Skipped(d, str(e)))
            continue
        if run.run_id in first_dir:
            skipped.append(Skipped(d, f"duplicate: run {run.run_id} was already read from {first_dir[run.run_id]}"))
            continue
        first_dir[run.run_id] = d
        runs.append(run)
    return runs, skipped
