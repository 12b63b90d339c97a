"""The results database: one DuckDB file per study, `results/<study>/rlrs.duckdb`.

Exactly one writer, `rlrs collect` (`ingest`), fills it from finished run
directories (docs/design.md) and the study's plan.json, in ONE transaction.
Everything else (`rlrs query`, the analysis, the report) opens it read-only.

Schema (version 1)
==================

Table `runs`: one row per run (primary key run_id).
    run_id                      12-hex run id (config.json `run_id`)
    study                       the `--study` given to collect, else the plan's study, else meta.study
    size, arm, sweep            labels from config.json `meta` (the run's first requester; a run
                                shared by several parts of a study has all its labels in `plan`)
    tags                        JSON, meta.tags (e.g. {"component": "experts", "factor": 2.0})
    d_model, n_layers, n_heads, seq_len, d_ff, vocab_size, init_scale
                                model shape (config.json `model`)
    moe                         BOOLEAN, true for a mixture-of-experts model
    n_experts, top_k, granularity, capacity_factor
                                the MoE block; NULL for dense models
    lr, weight_decay            optim.lr (base rate) and optim.weight_decay
    final_lr_fraction, warmup_steps, schedule_shape
                                schedule.final_lr_fraction, .warmup_steps, .shape
    multipliers                 JSON, schedule.multipliers ({component: {start, end}})
    mult_<c>_start, mult_<c>_end
                                the same flat, for c in embedding, attention, ffn, router,
                                experts, head; NULL where the model lacks the component
    batch_size, steps           train.batch_size, train.steps (planned length)
    seed                        config seed
    corpus, tokenizer           data.corpus, data.tokenizer
    steps_done, tokens          from summary.json: steps trained, tokens seen
    params_total, params_active, params_nonembedding, params_active_nonembedding
                                parameter counts from summary.json
    params_by_component         JSON, summary.json params_by_component
    status                      completed | diverged | failed
    final_eval_loss             nats/token on the fixed eval set; NULL unless completed
    final_eval_bpb              bits per byte
    train_loss_last100          mean train loss over the last 100 steps (the tuning score)
    wall_time_s, step_time_s    run wall time (summed over resumes), mean train step time
    executor, job_id, host, git_commit
                                where and from what code it ran
    versions                    JSON, {python, torch, rlrs, numpy}
    config                      JSON, the whole resolved config.json
    error                       message of a failed or diverged run, else NULL
    started_at, finished_at     TIMESTAMP in UTC, without time zone (TIMESTAMPTZ would need pytz
                                to fetch in Python); from the ISO strings in summary.json
    run_dir                     absolute path of the ingested run directory
    source_sha256               SHA-256 of the run's files, path and study label: a run whose
                                files did not change is not rewritten by the next collect
    ingested_at                 TIMESTAMP (UTC), when this row was written

Table `metrics`: one row per (run_id, step) (primary key), from metrics.parquet.
    run_id, step                step is 0-based
    tokens                      tokens seen after this step
    train_loss                  nats/token
    eval_loss                   NULL except at evaluation steps
    lb_loss, z_loss, dropped_frac
                                MoE load-balancing loss, router z-loss, dropped-token share;
                                NULL for dense models
    grad_norm                   gradient norm before clipping
    lr_<c>, update_<c>          learning rate and relative update size ||dW||/||W|| of each
                                component c in embedding, attention, ffn, router, experts, head,
                                norm; NULL where the model lacks c

Table `plan`: the study's requested (run, labels) pairs from plan.json; many rows
can name one run_id (the baseline at its best lr is in main, lr and ladder).
    study, run_id, size, arm, sweep
    tags                        JSON

Table `studies`: one row per study whose plan was collected (primary key name).
    name, file, sha256          study name, study file path, SHA-256 of that file
    config                      JSON, the resolved study dict
    collected_at                TIMESTAMP (UTC)

Table `tune_trajectory`: one row per candidate run of the study's searches
(rlrs.tune; from results/<study>/tune/<size>.<arm>.json), in search order.
    study, size, family, arm    the search: tuning size, its family (dense | moe), the arm
    space                       global | relative
    step                        0-based row number within the search (0 = the start run)
    pass                        1-based pass (0 for the start run)
    parameter                   lr, init_scale, final_lr_fraction, weight_decay or
                                <component>.start / .end; NULL for the start run
    value, previous, factor     the candidate value, the value it was tried against, the factor
    run_id, score, status       the candidate run, its score (NULL when diverged), its status
    accepted                    the candidate became the current value (the start run: true)
    best_score                  the best score after this parameter's batch
    runs_spent                  distinct runs the search had asked for after this batch

Table `tuned`: one row per (study, size, arm, parameter): the search's result.
    study, size, family, arm, space, parameter
    start_value, value, ratio   the arm's own value, the tuned one, value / start_value
    best_score, best_run_id, runs_spent, passes, stop_reason
                                the search's outcome (stop_reason: converged | max_passes | max_runs)

Table `schema_version`: version INTEGER, created_at TIMESTAMP (UTC). A database
of another version than this code writes is refused (no migrations: the
database is derived data, rebuilt from the run directories).

View `final_losses`: one row per planned (run_id, size, arm, sweep); labels from
    `plan` where the run is planned, else from `runs`. Columns: study, run_id,
    size, arm, sweep, tags, status ('missing' for a planned run not ingested),
    final_eval_loss, final_eval_bpb, train_loss_last100, lr, seed, steps,
    tokens, d_model, n_layers, moe, params_total, params_active,
    params_nonembedding, params_active_nonembedding.
View `component_metrics`: long format of the per-component columns: run_id,
    step, component, lr, update_size (rows where both are NULL are left out).
View `eval_curves`: run_id, step, tokens, eval_loss for the steps with an eval.

`ingest(..., after_ingest=fn)` runs `fn(con)` inside the same transaction, so
derived tables and views commit or roll back with the runs: `rlrs collect`
passes rlrs.analysis.materialize, which adds the `analysis_*` tables and the
views over them (`speedup`, `transfer`, ...; documented in rlrs/analysis.py).

Readers: `connect(path)` (read-only by default), `read_frame(path, sql)` (a
polars frame), `rlrs query "SQL" [--db PATH] [--format table|csv|json]`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import duckdb

from rlrs.components import COMPONENTS, SCHEDULED  # torch-free

SCHEMA_VERSION = 1
DEFAULT_DB = Path("results/demo/rlrs.duckdb")

STATUSES = ("completed", "diverged", "failed")

# ---------------------------------------------------------------------------
# Schema. Column order here is the table's column order.

RUN_COLUMNS: dict[str, str] = {
    "run_id": "VARCHAR PRIMARY KEY",
    "study": "VARCHAR",
    "size": "VARCHAR",
    "arm": "VARCHAR",
    "sweep": "VARCHAR",
    "tags": "JSON",
    "d_model": "BIGINT",
    "n_layers": "BIGINT",
    "n_heads": "BIGINT",
    "seq_len": "BIGINT",
    "d_ff": "BIGINT",
    "vocab_size": "BIGINT",
    "init_scale": "DOUBLE",
    "moe": "BOOLEAN",
    "n_experts": "BIGINT",
    "top_k": "BIGINT",
    "granularity": "BIGINT",
    "capacity_factor": "DOUBLE",
    "lr": "DOUBLE",
    "weight_decay": "DOUBLE",
    "final_lr_fraction": "DOUBLE",
    "warmup_steps": "BIGINT",
    "schedule_shape": "VARCHAR",
    "multipliers": "JSON",
    **{f"mult_{c}_{end}": "DOUBLE" for c in SCHEDULED for end in ("start", "end")},
    "batch_size": "BIGINT",
    "steps": "BIGINT",
    "seed": "BIGINT",
    "corpus": "VARCHAR",
    "tokenizer": "VARCHAR",
    "steps_done": "BIGINT",
    "tokens": "BIGINT",
    "params_total": "BIGINT",
    "params_active": "BIGINT",
    "params_nonembedding": "BIGINT",
    "params_active_nonembedding": "BIGINT",
    "params_by_component": "JSON",
    "status": "VARCHAR NOT NULL",
    "final_eval_loss": "DOUBLE",
    "final_eval_bpb": "DOUBLE",
    "train_loss_last100": "DOUBLE",
    "wall_time_s": "DOUBLE",
    "step_time_s": "DOUBLE",
    "executor": "VARCHAR",
    "job_id": "VARCHAR",
    "host": "VARCHAR",
    "git_commit": "VARCHAR",
    "versions": "JSON",
    "config": "JSON",
    "error": "VARCHAR",
    "started_at": "TIMESTAMP",
    "finished_at": "TIMESTAMP",
    "run_dir": "VARCHAR",
    "source_sha256": "VARCHAR",
    "ingested_at": "TIMESTAMP",
}

# metrics.parquet columns (all numeric); the run id is added from config.json.
METRIC_COLUMNS: dict[str, str] = {
    "step": "BIGINT",
    "tokens": "BIGINT",
    "train_loss": "DOUBLE",
    "eval_loss": "DOUBLE",
    "lb_loss": "DOUBLE",
    "z_loss": "DOUBLE",
    "dropped_frac": "DOUBLE",
    "grad_norm": "DOUBLE",
    **{f"{kind}_{c}": "DOUBLE" for c in COMPONENTS for kind in ("lr", "update")},
}
# A metrics file without these is corrupt; the others may be absent (NULL).
REQUIRED_METRICS = ("step", "tokens", "train_loss", "eval_loss")

PLAN_COLUMNS: dict[str, str] = {
    "study": "VARCHAR NOT NULL",
    "run_id": "VARCHAR NOT NULL",
    "size": "VARCHAR",
    "arm": "VARCHAR",
    "sweep": "VARCHAR",
    "tags": "JSON",
}

TRAJECTORY_COLUMNS: dict[str, str] = {
    "study": "VARCHAR NOT NULL", "size": "VARCHAR NOT NULL", "family": "VARCHAR", "arm": "VARCHAR NOT NULL",
    "space": "VARCHAR", "step": "BIGINT", "pass": "BIGINT", "parameter": "VARCHAR", "value": "DOUBLE",
    "previous": "DOUBLE", "factor": "DOUBLE", "run_id": "VARCHAR", "score": "DOUBLE", "status": "VARCHAR",
    "accepted": "BOOLEAN", "best_score": "DOUBLE", "runs_spent": "BIGINT",
}
TUNED_COLUMNS: dict[str, str] = {
    "study": "VARCHAR NOT NULL", "size": "VARCHAR NOT NULL", "family": "VARCHAR", "arm": "VARCHAR NOT NULL",
    "space": "VARCHAR", "parameter": "VARCHAR NOT NULL", "start_value": "DOUBLE", "value": "DOUBLE",
    "ratio": "DOUBLE", "best_score": "DOUBLE", "best_run_id": "VARCHAR", "runs_spent": "BIGINT",
    "passes": "BIGINT", "stop_reason": "VARCHAR",
}

_TABLES = f"""
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL, created_at TIMESTAMP NOT NULL);
CREATE TABLE IF NOT EXISTS runs ({", ".join(f"{k} {v}" for k, v in RUN_COLUMNS.items())});
CREATE TABLE IF NOT EXISTS metrics (
    run_id VARCHAR NOT NULL, {", ".join(f"{k} {v}" for k, v in METRIC_COLUMNS.items())},
    PRIMARY KEY (run_id, step));
CREATE TABLE IF NOT EXISTS plan ({", ".join(f"{k} {v}" for k, v in PLAN_COLUMNS.items())});
CREATE TABLE IF NOT EXISTS studies (
    name VARCHAR PRIMARY KEY, file VARCHAR, sha256 VARCHAR, config JSON, collected_at TIMESTAMP NOT NULL);
CREATE TABLE IF NOT EXISTS tune_trajectory ({", ".join(f'"{k}" {v}' for k, v in TRAJECTORY_COLUMNS.items())});
CREATE TABLE IF NOT EXISTS tuned ({", ".join(f'"{k}" {v}' for k, v in TUNED_COLUMNS.items())});
"""

_VIEWS = f"""
CREATE OR REPLACE VIEW final_losses AS
WITH labels AS (
    SELECT study, run_id, size, arm, sweep, tags FROM plan
    UNION ALL
    -- runs nobody planned (standalone runs, or collected without a plan) keep their own labels
    SELECT study, run_id, size, arm, sweep, tags FROM runs
    WHERE run_id NOT IN (SELECT run_id FROM plan)
)
SELECT l.study, l.run_id, l.size, l.arm, l.sweep, l.tags,
       coalesce(r.status, 'missing') AS status,
       r.final_eval_loss, r.final_eval_bpb, r.train_loss_last100, r.lr, r.seed, r.steps, r.tokens,
       r.d_model, r.n_layers, r.moe,
       r.params_total, r.params_active, r.params_nonembedding, r.params_active_nonembedding
FROM labels l LEFT JOIN runs r USING (run_id);

CREATE OR REPLACE VIEW component_metrics AS
SELECT run_id, step, component, lr, update_size FROM metrics
UNPIVOT INCLUDE NULLS ((lr, update_size) FOR component IN (
    {", ".join(f"(lr_{c}, update_{c}) AS {c}" for c in COMPONENTS)}))
-- a component the model lacks has NULL in both columns
WHERE lr IS NOT NULL OR update_size IS NOT NULL;

CREATE OR REPLACE VIEW eval_curves AS
SELECT run_id, step, tokens, eval_loss FROM metrics WHERE eval_loss IS NOT NULL;
"""

# JSON Schema of results/<study>/plan.json (written by the workflow).
PLAN_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["study", "runs"],
    "properties": {
        "study": {"type": "string", "minLength": 1},
        "study_file": {"type": ["string", "null"]},
        "study_sha256": {"type": ["string", "null"]},
        "study_config": {"type": ["object", "null"]},
        "runs": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["run_id"],
                "properties": {
                    "run_id": {"type": "string", "minLength": 1},
                    "size": {"type": ["string", "null"]},
                    "arm": {"type": ["string", "null"]},
                    "sweep": {"type": ["string", "null"]},
                    "tags": {"type": ["object", "null"]},
                },
            },
        },
    },
}


# ---------------------------------------------------------------------------
# Errors


class DatabaseError(Exception):
    """A clear, one-line problem with the database or the collect/query input."""


class SkipRun(Exception):
    """A run directory that cannot be ingested (incomplete or corrupt)."""


@dataclass(frozen=True)
class Skipped:
    run_dir: Path
    reason: str


@dataclass(frozen=True)
class IngestResult:
    ingested: tuple[str, ...]  # run ids written (new or changed)
    unchanged: tuple[str, ...]  # run ids whose rows were already up to date
    skipped: tuple[Skipped, ...]
    seconds: float


# ---------------------------------------------------------------------------
# Connections


def connect(db_path: Path | str, read_only: bool = True) -> duckdb.DuckDBPyConnection:
    """Open the database. Read-only (the default) needs an existing file;
    read-write creates the schema if needed and refuses a newer schema version."""
    db_path = Path(db_path)
    if read_only and not db_path.is_file():
        raise DatabaseError(f"no database at {db_path} (run `rlrs collect` first, or pass --db)")
    if not read_only:
        con = _open_rw(db_path)
        try:
            con.execute("BEGIN")
            _create_schema(con)
            con.execute("COMMIT")
        except BaseException:
            con.close()
            raise
        return con
    try:
        con = duckdb.connect(str(db_path), read_only=True)
    except duckdb.Error as e:
        raise DatabaseError(f"cannot open {db_path}: {_first_line(e)}") from None
    return con


def read_frame(db_path: Path | str, sql: str, params: list | None = None):
    """Run one query read-only and return a polars DataFrame (empty when the
    statement returns no rows). Writes are refused by DuckDB itself."""
    import polars as pl

    con = connect(db_path, read_only=True)
    try:
        rel = con.sql(sql, params=params) if params is not None else con.sql(sql)
        return rel.pl() if rel is not None else pl.DataFrame()
    except duckdb.Error as e:
        if "read-only mode" in str(e):
            raise DatabaseError(
                f"refused: {db_path} is opened read-only; only `rlrs collect` writes it ({_first_line(e)})"
            ) from None
        raise DatabaseError(f"query failed: {_first_line(e)}") from None
    finally:
        con.close()


def _utc_now() -> dt.datetime:
    """Timestamps are stored as naive UTC."""
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


def _first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def has_table(con: duckdb.DuckDBPyConnection, name: str) -> bool:
    """Whether the database (not the connection's temp catalog) has table `name`."""
    return con.execute(
        "SELECT count(*) FROM information_schema.tables "
        "WHERE table_catalog = current_database() AND table_schema = 'main' AND table_name = ?",
        [name],
    ).fetchall()[0][0] > 0


def _check_version(con: duckdb.DuckDBPyConnection, db_path: Path) -> None:
    if not has_table(con, "schema_version"):
        return
    found = con.execute("SELECT max(version) FROM schema_version").fetchall()[0][0]
    if found is not None and found > SCHEMA_VERSION:
        raise DatabaseError(
            f"{db_path} has schema version {found}, newer than the {SCHEMA_VERSION} this rlrs writes: "
            "upgrade rlrs, or collect into a new --db"
        )
    if found is not None and found < SCHEMA_VERSION:
        # No migrations: the database is derived data, rebuilt from the run directories.
        raise DatabaseError(
            f"{db_path} has schema version {found}, older than the {SCHEMA_VERSION} this rlrs writes: "
            "delete it and collect again (it is rebuilt from the run directories)"
        )


def _create_schema(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(_TABLES)
    if con.execute("SELECT count(*) FROM schema_version").fetchall()[0][0] == 0:
        con.execute("INSERT INTO schema_version VALUES (?, ?)", [SCHEMA_VERSION, _utc_now()])
    con.execute(_VIEWS)


# ---------------------------------------------------------------------------
# Reading one run directory


@dataclass(frozen=True)
class _Run:
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


def _read_run_dir(run_dir: Path, study: str | None) -> _Run:
    """Validate one run directory and build its `runs` row, or raise SkipRun."""
    if not (run_dir / "config.json").exists():
        raise SkipRun("not a run directory: no config.json")
    config = _load_json(run_dir / "config.json")
    summary = _load_json(run_dir / "summary.json")
    run_id = _get(config, "run_id", "config.json")
    if summary.get("run_id") != run_id:
        raise SkipRun(
            f"corrupt: run_id mismatch: config.json says {run_id!r}, summary.json says {summary.get('run_id')!r}"
        )
    status = summary.get("status")
    if status not in STATUSES:
        raise SkipRun(f"incomplete: status {status!r} (ingested: {', '.join(STATUSES)})")

    metrics = run_dir / "metrics.parquet"
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
                "steps_done", "tokens", "params_total", "params_active", "params_nonembedding",
                "params_active_nonembedding", "params_by_component", "status", "final_eval_loss",
                "final_eval_bpb", "train_loss_last100", "wall_time_s", "step_time_s", "executor",
                "job_id", "host", "git_commit", "versions", "error", "started_at", "finished_at",
            )
        },
        "config": config,
        "run_dir": str(run_dir.resolve()),
        "source_sha256": None,  # below
        "ingested_at": None,  # set once per collect
    }
    row = {name: _coerce(row[name], sql_type, name) for name, sql_type in RUN_COLUMNS.items()}
    row["source_sha256"] = _fingerprint(run_dir, row["study"], metrics)
    return _Run(run_dir, row, metrics, metric_columns)


def _fingerprint(run_dir: Path, study: str | None, metrics: Path | None) -> str:
    """SHA-256 of everything a run's rows are made from (its files, where they
    are, the study label), so an unchanged run need not be rewritten."""
    h = hashlib.sha256(json.dumps([SCHEMA_VERSION, str(run_dir.resolve()), study]).encode())
    for path in (run_dir / "config.json", run_dir / "summary.json", metrics):
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
        raise SkipRun(f"corrupt: metrics.parquet is unreadable ({_first_line(e)})") from None
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


# ---------------------------------------------------------------------------
# Metrics: one bulk read of every file into a staging table


def _stage_metrics(con: duckdb.DuckDBPyConnection, runs: list[_Run]) -> dict[str, str]:
    """Load the metrics of `runs` into temp table _stage. Returns
    {run_id: reason} for runs whose metrics turned out unusable (their rows
    are not staged). One read_parquet over all files; only if that fails is
    each file read alone, to name the broken ones."""
    with_metrics = [r for r in runs if r.metrics is not None]
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE _stage (run_id VARCHAR, "
        f"{', '.join(f'{k} {v}' for k, v in METRIC_COLUMNS.items())})"
    )
    _temp_table_from(
        con, "_files", {"filename": [str(r.metrics) for r in with_metrics], "run_id": [r.run_id for r in with_metrics]}
    )
    bad: dict[str, str] = {}
    try:
        _insert_metrics(con, with_metrics)
    except duckdb.Error:
        # Rare: a file whose footer reads fine but whose data does not.
        con.execute("DELETE FROM _stage")
        for run in with_metrics:
            try:
                _insert_metrics(con, [run])
            except duckdb.Error as e:
                bad[run.run_id] = f"corrupt: metrics.parquet is unreadable ({_first_line(e)})"
    for run_id, n in con.execute(
        "SELECT run_id, count(*) FROM "
        "(SELECT run_id, step FROM _stage GROUP BY ALL HAVING count(*) > 1 OR step IS NULL) GROUP BY run_id"
    ).fetchall():
        bad[run_id] = f"corrupt: metrics.parquet has {n} duplicate or null step value(s)"
    if bad:
        con.execute("DELETE FROM _stage WHERE list_contains(?, run_id)", [list(bad)])
    return bad


def _insert_metrics(con: duckdb.DuckDBPyConnection, runs: list[_Run]) -> None:
    """One INSERT of every row of the runs' metrics files into _stage, tagged
    with the run id. union_by_name fills a column missing from some files with
    NULL; a column missing from every file is not in the union at all, so
    select NULL for it."""
    if not runs:
        return
    present = frozenset().union(*(r.metric_columns for r in runs))
    select = ", ".join(
        f"CAST(m.{k} AS {t})" if k in present else f"CAST(NULL AS {t})" for k, t in METRIC_COLUMNS.items()
    )
    con.execute(
        f"INSERT INTO _stage SELECT f.run_id, {select} "
        "FROM read_parquet(?, union_by_name = true, filename = true) AS m JOIN _files AS f USING (filename)",
        [[str(r.metrics) for r in runs]],
    )


def _temp_table_from(con: duckdb.DuckDBPyConnection, name: str, columns: dict[str, list], schema=None) -> None:
    """Create temp table `name` from Python columns through Arrow (one bulk copy,
    not a row-by-row insert)."""
    import pyarrow as pa

    table = pa.table(columns, schema=schema)
    con.register(f"{name}_arrow", table)
    try:
        con.execute(f"CREATE OR REPLACE TEMP TABLE {name} AS SELECT * FROM {name}_arrow")
    finally:
        con.unregister(f"{name}_arrow")


def _arrow_schema(columns: dict[str, str]):
    import pyarrow as pa

    types = {
        "BIGINT": pa.int64(),
        "DOUBLE": pa.float64(),
        "BOOLEAN": pa.bool_(),
        "VARCHAR": pa.string(),
        "JSON": pa.string(),  # serialized by _coerce; cast to JSON on insert
        "TIMESTAMP": pa.timestamp("us"),
    }
    return pa.schema([(name, types[sql.split()[0]]) for name, sql in columns.items()])


# ---------------------------------------------------------------------------
# The plan


def load_plan(plan: Path | str | Mapping) -> dict:
    """Read and validate plan.json (or an already loaded dict)."""
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import best_match

    where = str(plan) if isinstance(plan, (str, Path)) else "plan"
    if isinstance(plan, (str, Path)):
        try:
            doc = json.loads(Path(plan).read_text())
        except FileNotFoundError:
            raise DatabaseError(f"no plan file at {plan}") from None
        except json.JSONDecodeError as e:
            raise DatabaseError(f"{plan} is not valid JSON: {e}") from None
    else:
        doc = dict(plan)
    error = best_match(Draft202012Validator(PLAN_SCHEMA).iter_errors(doc))
    if error is not None:
        field = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path).lstrip(".")
        raise DatabaseError(f"{where}: field {field or '<top level>'}: {error.message}")
    seen: dict[tuple, int] = {}
    for i, r in enumerate(doc["runs"]):
        tags = json.dumps(r.get("tags") or {}, sort_keys=True)
        key = (r["run_id"], r.get("size"), r.get("arm"), r.get("sweep"), tags)
        if key in seen:
            raise DatabaseError(f"{where}: field runs[{i}]: the same entry as runs[{seen[key]}] ({r['run_id']})")
        seen[key] = i
    return doc


def _write_plan(con: duckdb.DuckDBPyConnection, plan: dict) -> None:
    """Replace this study's plan rows and its `studies` row."""
    study, runs = plan["study"], plan["runs"]
    con.execute("DELETE FROM plan WHERE study = ?", [study])
    _temp_table_from(
        con,
        "_plan_new",
        {
            "study": [study] * len(runs),
            "run_id": [r["run_id"] for r in runs],
            **{k: [r.get(k) for r in runs] for k in ("size", "arm", "sweep")},
            "tags": [json.dumps(r.get("tags") or {}, sort_keys=True) for r in runs],
        },
        schema=_arrow_schema(PLAN_COLUMNS),
    )
    con.execute("INSERT INTO plan BY NAME SELECT * FROM _plan_new")
    con.execute("DELETE FROM studies WHERE name = ?", [study])
    config = json.dumps(plan.get("study_config"), sort_keys=True)
    con.execute(
        "INSERT INTO studies VALUES (?, ?, ?, ?, ?)",
        [study, plan.get("study_file"), plan.get("study_sha256"), config, _utc_now()],
    )


# ---------------------------------------------------------------------------
# Tune results (rlrs.tune)


def _write_tune(con: duckdb.DuckDBPyConnection, study: str, results: list[Mapping]) -> None:
    """Replace this study's rows of `tune_trajectory` and `tuned` with the
    given search results (rlrs.tune result documents)."""
    traj, tuned = [], []
    for doc in results:
        if doc.get("study") != study:
            raise DatabaseError(f"tune result for {doc.get('size')}.{doc.get('arm')} belongs to study "
                                f"{doc.get('study')!r}, not {study!r}")
        head = {"study": study, **{k: doc[k] for k in ("size", "family", "arm", "space")}}
        for row in doc["trajectory"]:
            traj.append({**head, **{k: row[k] for k in TRAJECTORY_COLUMNS if k in row}})
        for name, value in doc["final"].items():
            start = doc["start"][name]
            tuned.append({**head, "parameter": name, "start_value": start, "value": value,
                          "ratio": value / start if start else None,
                          **{k: doc[k] for k in ("best_score", "best_run_id", "runs_spent", "passes", "stop_reason")}})
    for table, columns, rows in (("tune_trajectory", TRAJECTORY_COLUMNS, traj), ("tuned", TUNED_COLUMNS, tuned)):
        con.execute(f"DELETE FROM {table} WHERE study = ?", [study])
        _temp_table_from(con, f"_{table}_new", {k: [r.get(k) for r in rows] for k in columns},
                         schema=_arrow_schema(columns))
        con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM _{table}_new")


# ---------------------------------------------------------------------------
# Ingest


def ingest(
    db_path: Path | str,
    run_dirs: Iterable[Path | str],
    *,
    study: str | None = None,
    plan: Path | str | Mapping | None = None,
    after_ingest: Callable[[duckdb.DuckDBPyConnection], None] | None = None,
    progress: bool = False,
    tune: list[Mapping] | None = None,
) -> IngestResult:
    """Write the given run directories (and the plan) into the database in
    one transaction, and return what was written, left alone and skipped.

    - Unusable run directories are skipped with a reason; their existing rows
      are left exactly as they were.
    - A run whose files are byte-identical to those of its ingested rows
      (runs.source_sha256) is left alone; a changed run has its rows deleted,
      then inserted, so re-ingesting gives identical rows either way.
    - `tune`: the study's finished search results (rlrs.tune.finished_results);
      they replace its `tune_trajectory` and `tuned` rows (None: left alone).
    - `after_ingest(con)` runs inside the transaction (rlrs.analysis adds
      derived tables there); if it raises, nothing is written.
    - A new database file is built under a temporary name and renamed into
      place, so a crash never leaves a half-written file; an existing one is
      protected by the transaction (DuckDB's write-ahead log).
    """
    t0 = time.perf_counter()
    db_path = Path(db_path)
    plan_doc = load_plan(plan) if plan is not None else None
    if plan_doc is not None and study is not None and plan_doc["study"] != study:
        raise DatabaseError(f"--study {study!r} does not match the plan's study {plan_doc['study']!r}")
    study = study if study is not None else (plan_doc or {}).get("study")

    db_path.parent.mkdir(parents=True, exist_ok=True)
    fresh = not db_path.exists()
    work = db_path.with_name(f".{db_path.name}.tmp-{os.getpid()}") if fresh else db_path
    try:
        con = _open_rw(work)  # refuses a newer schema before reading any run
        try:
            runs, skipped = _read_run_dirs(run_dirs, study, progress)
            known = _fingerprints(con)
            unchanged = [r.run_id for r in runs if known.get(r.run_id) == r.row["source_sha256"]]
            changed = [r for r in runs if known.get(r.run_id) != r.row["source_sha256"]]
            bad = _stage_metrics(con, changed)
            skipped += [Skipped(r.run_dir, bad[r.run_id]) for r in changed if r.run_id in bad]
            changed = [r for r in changed if r.run_id not in bad]
            now = _utc_now()
            _temp_table_from(
                con,
                "_runs_new",
                {k: [now if k == "ingested_at" else r.row[k] for r in changed] for k in RUN_COLUMNS},
                schema=_arrow_schema(RUN_COLUMNS),
            )
            con.execute("BEGIN")
            try:
                _create_schema(con)
                con.execute("DELETE FROM metrics WHERE run_id IN (SELECT run_id FROM _runs_new)")
                con.execute("DELETE FROM runs WHERE run_id IN (SELECT run_id FROM _runs_new)")
                con.execute("INSERT INTO runs BY NAME SELECT * FROM _runs_new")
                con.execute("INSERT INTO metrics BY NAME SELECT * FROM _stage")
                if plan_doc is not None:
                    _write_plan(con, plan_doc)
                if tune is not None:
                    if study is None:
                        raise DatabaseError("tune results need a study name (--study or --plan)")
                    _write_tune(con, study, tune)
                if after_ingest is not None:
                    after_ingest(con)
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
        finally:
            con.close()
        if fresh:
            os.replace(work, db_path)
    finally:
        if fresh:  # after a failure: the temporary file and its log
            for leftover in (work, work.with_name(work.name + ".wal")):
                leftover.unlink(missing_ok=True)
    return IngestResult(
        ingested=tuple(r.run_id for r in changed),
        unchanged=tuple(unchanged),
        skipped=tuple(skipped),
        seconds=time.perf_counter() - t0,
    )


def _read_run_dirs(
    run_dirs: Iterable[Path | str], study: str | None, progress: bool
) -> tuple[list[_Run], list[Skipped]]:
    """Read and validate every run directory; the unusable ones come back as Skipped."""
    from tqdm import tqdm

    runs: list[_Run] = []
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


def _fingerprints(con: duckdb.DuckDBPyConnection) -> dict[str, str]:
    """run_id -> source_sha256 of the runs already in the database."""
    return dict(con.execute("SELECT run_id, source_sha256 FROM runs").fetchall()) if has_table(con, "runs") else {}


def _open_rw(db_path: Path) -> duckdb.DuckDBPyConnection:
    try:
        con = duckdb.connect(str(db_path))
    except duckdb.Error as e:
        raise DatabaseError(f"cannot open {db_path} for writing: {_first_line(e)}") from None
    try:
        _check_version(con, db_path)
    except BaseException:
        con.close()
        raise
    return con


# ---------------------------------------------------------------------------
# Command line (wired in rlrs/cli.py)


def _tune_results(plan: Path) -> list[dict] | None:
    """The finished, current search results of the plan's study, read from
    the tune/ folder beside plan.json (results/<study>/tune/); None when the
    study has no tune block."""
    from rlrs.errors import ConfigError
    from rlrs.tune import finished_results

    config = load_plan(plan).get("study_config") or {}
    if not config.get("tune"):
        return None
    try:
        return finished_results(config, root=Path(plan).parent)
    except ConfigError as e:
        raise DatabaseError(f"{plan}: study_config: {e}") from None


def cli_collect(
    db: Path, run_dirs: list[Path], runs_root: Path | None = None, study: str | None = None, plan: Path | None = None
) -> int:
    """`rlrs collect`: ingest run directories (given, and/or every directory
    below runs_root holding a config.json) and the plan. Skipped runs are
    named on stderr; exit 0 unless the input itself is bad (2)."""
    try:
        dirs = [Path(d) for d in run_dirs]
        absent = [str(d) for d in dirs if not d.is_dir()]
        if absent:
            raise DatabaseError(f"run directory not found: {', '.join(absent)}")
        if runs_root is not None:
            if not Path(runs_root).is_dir():
                raise DatabaseError(f"--runs-root {runs_root} is not a directory")
            dirs += sorted(p.parent for p in Path(runs_root).rglob("config.json"))
        if not dirs and runs_root is None and plan is None:
            raise DatabaseError("nothing to collect: give run directories, --runs-root or --plan")
        dirs = list(dict.fromkeys(dirs))  # a directory named twice is read once
        from rlrs.analysis import materialize  # derived tables commit together with the runs

        tune = _tune_results(plan) if plan is not None else None
        result = ingest(db, dirs, study=study, plan=plan, after_ingest=materialize, progress=True, tune=tune)
    except DatabaseError as e:
        print(f"rlrs collect: error: {e}", file=sys.stderr)
        return 2
    for s in result.skipped:
        print(f"rlrs collect: skipped {s.run_dir}: {s.reason}", file=sys.stderr)
    print(
        f"collected into {db} in {result.seconds:.2f} s: {len(result.ingested)} run(s) written, "
        f"{len(result.unchanged)} unchanged, {len(result.skipped)} skipped"
    )
    return 0


def cli_query(sql: str, db: Path | None = None, fmt: str = "table") -> int:
    """`rlrs query`: run SQL on a read-only connection and print the result."""
    import polars as pl

    formats = ("table", "csv", "json")
    if fmt not in formats:
        print(f"rlrs query: error: --format {fmt!r}; allowed: {', '.join(formats)}", file=sys.stderr)
        return 2
    try:
        frame = read_frame(db if db is not None else DEFAULT_DB, sql)
    except DatabaseError as e:
        print(f"rlrs query: error: {e}", file=sys.stderr)
        return 2
    if fmt == "csv":
        sys.stdout.write(frame.write_csv())
    elif fmt == "json":
        sys.stdout.write(frame.write_json() + "\n")
    elif frame.width:
        # Show every row and column: this is the whole answer, not a preview
        # (65,535 characters is the widest table polars draws; long strings are cut at 80).
        with pl.Config(
            tbl_rows=-1, tbl_cols=-1, fmt_str_lengths=80, tbl_width_chars=65_535, tbl_hide_dataframe_shape=True
        ):
            print(frame)
    return 0
