"""The database schema: tables, columns and views of `results/<study>/rlrs.duckdb`.

Every table, view and column is documented once, below (TABLE_DOCS,
COLUMN_DOCS), and stored in the database itself with COMMENT ON: read it
with `rlrs query "SELECT table_name, column_name, comment FROM duckdb_columns()"`.
The README's table of tables is checked against duckdb_columns() by the tests.
A database of another schema version is refused (no migrations: it is derived data).

`ingest(..., after_ingest=fn)` runs `fn(con)` inside the same transaction, so
derived tables and views commit or roll back with the runs: `rlrs collect`
passes rlrs.analysis.materialize, which adds the `analysis_*` tables and the
views over them (`speedup`, `transfer`, ...; the registry in rlrs.analysis).
"""

from __future__ import annotations

import datetime as dt

import duckdb

from rlrs.components import COMPONENTS, SCHEDULED

SCHEMA_VERSION = 3  # 2: lr_selection.failed, runs.reused_from; 3: runs.cpu_time_s, step_cpu_time_s

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
    "cpu_time_s": "DOUBLE",
    "step_cpu_time_s": "DOUBLE",
    "executor": "VARCHAR",
    "job_id": "VARCHAR",
    "host": "VARCHAR",
    "git_commit": "VARCHAR",
    "versions": "JSON",
    "config": "JSON",
    "error": "VARCHAR",
    "started_at": "TIMESTAMP",
    "finished_at": "TIMESTAMP",
    "reused_from": "VARCHAR",
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
    "study": "VARCHAR NOT NULL",
    "size": "VARCHAR NOT NULL",
    "family": "VARCHAR",
    "arm": "VARCHAR NOT NULL",
    "space": "VARCHAR",
    "step": "BIGINT",
    "pass": "BIGINT",
    "parameter": "VARCHAR",
    "value": "DOUBLE",
    "previous": "DOUBLE",
    "factor": "DOUBLE",
    "run_id": "VARCHAR",
    "score": "DOUBLE",
    "status": "VARCHAR",
    "accepted": "BOOLEAN",
    "best_score": "DOUBLE",
    "runs_spent": "BIGINT",
}


TUNED_COLUMNS: dict[str, str] = {
    "study": "VARCHAR NOT NULL",
    "size": "VARCHAR NOT NULL",
    "family": "VARCHAR",
    "arm": "VARCHAR NOT NULL",
    "space": "VARCHAR",
    "parameter": "VARCHAR NOT NULL",
    "start_value": "DOUBLE",
    "value": "DOUBLE",
    "ratio": "DOUBLE",
    "best_score": "DOUBLE",
    "best_run_id": "VARCHAR",
    "runs_spent": "BIGINT",
    "passes": "BIGINT",
    "stop_reason": "VARCHAR",
}


LR_SELECTION_COLUMNS: dict[str, str] = {
    "study": "VARCHAR NOT NULL",
    "size": "VARCHAR NOT NULL",
    "family": "VARCHAR",
    "arm": "VARCHAR NOT NULL",
    "centre_lr": "DOUBLE",
    "chosen_lr": "DOUBLE",
    "bracketed": "BOOLEAN",
    "cap_reached": "BOOLEAN",
    "failed": "BOOLEAN",
    "n_extra": "BIGINT",
    "n_points": "BIGINT",
    "factor": "DOUBLE",
    "selection_seeds": "JSON",
    "ranked_on": "JSON",
    "note": "VARCHAR",
}


TABLE_DOCS = {
    "runs": "one row per run (primary key run_id), from its config.json and summary.json",
    "metrics": "one row per (run_id, step) (primary key), from metrics.parquet",
    "plan": "the study's requested (run, labels) pairs from plan.json; many rows can name one run_id",
    "studies": "one row per study whose plan was collected (primary key name)",
    "tune_trajectory": "one row per candidate run of the study's searches (rlrs.tune), in search order",
    "tuned": "one row per (study, size, arm, parameter): a search's result",
    "lr_selection": "one row per (study, size, arm) of a staged study: stage 1's lr choice (rlrs.select_lr)",
    "schema_version": "the schema version this database was written with",
    "final_losses": "one row per planned (run_id, size, arm, sweep); labels from plan, else from runs",
    "component_metrics": "long format of the per-component metrics (rows where both are NULL left out)",
    "eval_curves": "the steps with an evaluation",
}

_LABELS = {
    "study": "study name",
    "size": "size label (a run shared by several parts of a study: its first requester's; all labels are in plan)",
    "arm": "arm label",
    "sweep": "which part of the study asked for the run: main, lr, ladder, usweep, removal, contribution, tune, scaling",
    "tags": 'JSON, the sweep\'s tags (rlrs.tags), e.g. {"component": "experts", "factor": 2.0}',
}
_SEARCH = {
    "study": "study name",
    "size": "the search's tuning size",
    "family": "dense | moe",
    "arm": "the searched arm",
    "space": "global | relative",
}
_SUMMARY_COUNTS = {
    "params_total": "parameters",
    "params_active": "parameters active per token",
    "params_nonembedding": "parameters outside the embedding and head",
    "params_active_nonembedding": "non-embedding parameters active per token",
}
COLUMN_DOCS: dict[str, dict[str, str]] = {
    "runs": {
        "run_id": "12-hex run id (config.json run_id)",
        **_LABELS,
        "study": "the --study given to collect, else the plan's study, else meta.study",
        "d_model": "model.d_model",
        "n_layers": "model.n_layers",
        "n_heads": "model.n_heads",
        "seq_len": "model.seq_len",
        "d_ff": "model.d_ff",
        "vocab_size": "model.vocab_size",
        "init_scale": "model.init_scale",
        "moe": "true for a mixture-of-experts model",
        "n_experts": "model.moe.n_experts; NULL for dense models",
        "top_k": "model.moe.top_k; NULL for dense models",
        "granularity": "model.moe.granularity; NULL for dense models",
        "capacity_factor": "model.moe.capacity_factor; NULL for dense models",
        "lr": "optim.lr (base rate)",
        "weight_decay": "optim.weight_decay",
        "final_lr_fraction": "schedule.final_lr_fraction",
        "warmup_steps": "schedule.warmup_steps",
        "schedule_shape": "schedule.shape",
        "multipliers": "JSON, schedule.multipliers ({component: {start, end}})",
        **{
            f"mult_{c}_{end}": f"schedule.multipliers.{c}.{end}; NULL where the model lacks {c}"
            for c in SCHEDULED
            for end in ("start", "end")
        },
        "batch_size": "train.batch_size",
        "steps": "train.steps (planned length)",
        "seed": "config seed",
        "corpus": "data.corpus",
        "tokenizer": "data.tokenizer",
        "steps_done": "steps trained (summary.json)",
        "tokens": "tokens seen (summary.json)",
        **_SUMMARY_COUNTS,
        "params_by_component": "JSON, parameters per component",
        "status": "completed | diverged | failed",
        "final_eval_loss": "nats/token on the fixed eval set; NULL unless completed",
        "final_eval_bpb": "bits per byte (bits per token for a tokens: corpus)",
        "train_loss_last100": "mean train loss over the last 100 steps (the tuning score)",
        "wall_time_s": "run wall time, summed over resumes",
        "step_time_s": "mean train step time (wall clock)",
        "cpu_time_s": "CPU seconds of the run's (rank 0's) process, all threads, over resumes; NULL if not recorded",
        "step_cpu_time_s": "mean CPU seconds per train step (as cpu_time_s); below step_time_s when cores were shared",
        "executor": "local | slurm | debug",
        "job_id": "Slurm or submitit job id",
        "host": "host the run trained on",
        "git_commit": "the code's git commit",
        "versions": "JSON, {python, torch, rlrs, numpy}",
        "config": "JSON, the whole resolved config.json",
        "error": "message of a failed or diverged run, else NULL",
        "started_at": "UTC, without time zone (TIMESTAMPTZ would need pytz to fetch in Python)",
        "finished_at": "UTC, without time zone",
        "reused_from": "the study whose finished run was copied here instead of training it "
        "(reuse_runs_from; the run directory's reused.json); NULL when trained in this study",
        "run_dir": "absolute path of the ingested run directory",
        "source_sha256": "SHA-256 of the run's files, path and study label: an unchanged run is not rewritten",
        "ingested_at": "UTC, when this row was written",
    },
    "metrics": {
        "run_id": "the run",
        "step": "0-based step",
        "tokens": "tokens seen after this step",
        "train_loss": "nats/token",
        "eval_loss": "NULL except at evaluation steps",
        "lb_loss": "MoE load-balancing loss; NULL for dense models",
        "z_loss": "router z-loss; NULL for dense models",
        "dropped_frac": "share of token slots dropped by expert capacity; NULL for dense models",
        "grad_norm": "gradient norm before clipping",
        **{f"lr_{c}": f"learning rate of {c} at this step; NULL where the model lacks it" for c in COMPONENTS},
        **{
            f"update_{c}": f"relative update size ||dW||/||W|| of {c}; NULL where the model lacks it "
            "and on the steps train.update_size_interval skips"
            for c in COMPONENTS
        },
    },
    "plan": {"run_id": "the requested run", **_LABELS},
    "studies": {
        "name": "study name",
        "file": "study file path",
        "sha256": "SHA-256 of the study file",
        "config": "JSON, the resolved study dict",
        "collected_at": "UTC, when the plan was collected",
    },
    "tune_trajectory": {
        **_SEARCH,
        "step": "0-based row number within the search (0 = the start run)",
        "pass": "1-based pass (0 for the start run)",
        "parameter": "lr, init_scale, final_lr_fraction, weight_decay or <component>.start / .end; NULL for the start run",
        "value": "the candidate value",
        "previous": "the value it was tried against",
        "factor": "the factor",
        "run_id": "the candidate run",
        "score": "its score (NULL when diverged)",
        "status": "its status",
        "accepted": "the candidate became the current value (the start run: true)",
        "best_score": "the best score after this parameter's batch",
        "runs_spent": "distinct runs the search had asked for after this batch",
    },
    "tuned": {
        **_SEARCH,
        "parameter": "the tuned parameter",
        "start_value": "the arm's own value",
        "value": "the tuned value",
        "ratio": "value / start_value",
        "best_score": "the search's best score",
        "best_run_id": "the run that scored it",
        "runs_spent": "distinct runs the search asked for",
        "passes": "passes made",
        "stop_reason": "converged | max_passes | max_runs",
    },
    "lr_selection": {
        "study": "study name",
        "size": "the size",
        "family": "dense | moe",
        "arm": "the arm",
        "centre_lr": "the first grid's centre: the study's lr_rule at that size (default: the tuned lr where the "
        "family was tuned, else the arm's lr)",
        "chosen_lr": "the lr every later stage runs the cell at (lowest mean loss); NULL when no lr trained (failed)",
        "bracketed": "the chosen lr has a ranked point on each side (interior to the grid)",
        "cap_reached": "still at an edge after max_extra_points extra points: the cell is unbracketed",
        "failed": "no lr trained (every point diverged, down to the cap): no lr to measure at, so the size is not "
        "measured (stage 2 leaves it out) and check 2 fails the cell",
        "n_extra": "points run beyond the first grid",
        "n_points": "lrs run in all",
        "factor": "the step from an edge to the next point",
        "selection_seeds": "JSON, the seeds the selection ran on",
        "ranked_on": "JSON, the seeds the ranking used (those every lr has)",
        "note": "why, in words (unbracketed, diverged points, seeds left out), or NULL",
    },
    "schema_version": {"version": "the schema version", "created_at": "UTC, when the database was created"},
    "final_losses": {
        **{k: f"{v} (from plan where the run is planned, else runs)" for k, v in _LABELS.items()},
        "run_id": "the planned run",
        "status": "completed | diverged | failed | missing (planned, not ingested)",
        **{
            k: f"runs.{k}"
            for k in (
                "final_eval_loss",
                "final_eval_bpb",
                "train_loss_last100",
                "lr",
                "seed",
                "steps",
                "tokens",
                "d_model",
                "n_layers",
                "moe",
                *_SUMMARY_COUNTS,
            )
        },
    },
    "component_metrics": {
        "run_id": "the run",
        "step": "0-based step",
        "component": "the component",
        "lr": "its learning rate at this step",
        "update_size": "its relative update size ||dW||/||W||",
    },
    "eval_curves": {"run_id": "the run", "step": "0-based step", "tokens": "tokens seen", "eval_loss": "nats/token"},
}
VIEWS = ("final_losses", "component_metrics", "eval_curves")


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _comments() -> str:
    """COMMENT ON every table, view and column above."""
    out = []
    for table, doc in TABLE_DOCS.items():
        out.append(f"COMMENT ON {'VIEW' if table in VIEWS else 'TABLE'} {table} IS {_quote(doc)};")
        out += [f'COMMENT ON COLUMN {table}."{c}" IS {_quote(d)};' for c, d in COLUMN_DOCS[table].items()]
    return "\n".join(out)


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
CREATE TABLE IF NOT EXISTS lr_selection ({", ".join(f'"{k}" {v}' for k, v in LR_SELECTION_COLUMNS.items())});
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


def utc_now() -> dt.datetime:
    """Timestamps are stored as naive UTC."""
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


def has_table(con: duckdb.DuckDBPyConnection, name: str) -> bool:
    """Whether the database (not the connection's temp catalog) has table `name`."""
    return (
        con.execute(
            "SELECT count(*) FROM information_schema.tables "
            "WHERE table_catalog = current_database() AND table_schema = 'main' AND table_name = ?",
            [name],
        ).fetchall()[0][0]
        > 0
    )


def create_schema(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(_TABLES)
    if con.execute("SELECT count(*) FROM schema_version").fetchall()[0][0] == 0:
        con.execute("INSERT INTO schema_version VALUES (?, ?)", [SCHEMA_VERSION, utc_now()])
    con.execute(_VIEWS)
    con.execute(_comments())
