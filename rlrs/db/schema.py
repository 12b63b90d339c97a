"""The database schema: tables, columns and views of `results/<study>/rlrs.duckdb`.

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
views over them (`speedup`, `transfer`, ...; the registry in rlrs.analysis).
"""
from __future__ import annotations

import datetime as dt

import duckdb

from rlrs.components import COMPONENTS, SCHEDULED

SCHEMA_VERSION = 1

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


def utc_now() -> dt.datetime:
    """Timestamps are stored as naive UTC."""
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


def has_table(con: duckdb.DuckDBPyConnection, name: str) -> bool:
    """Whether the database (not the connection's temp catalog) has table `name`."""
    return con.execute(
        "SELECT count(*) FROM information_schema.tables "
        "WHERE table_catalog = current_database() AND table_schema = 'main' AND table_name = ?",
        [name],
    ).fetchall()[0][0] > 0


def create_schema(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(_TABLES)
    if con.execute("SELECT count(*) FROM schema_version").fetchall()[0][0] == 0:
        con.execute("INSERT INTO schema_version VALUES (?, ?)", [SCHEMA_VERSION, utc_now()])
    con.execute(_VIEWS)
