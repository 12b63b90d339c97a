"""The report's tables that are not analyses: model sizes, multipliers per
arm, runs that did not complete, provenance, and the searches' progress and
results beside the paper's tuned values (rlrs.paper)."""

from __future__ import annotations

import json

import duckdb
import polars as pl

from rlrs import tags
from rlrs.analysis.members import F, I, S, frame
from rlrs.db import has_table
from rlrs.paper import PAPER_GLOBALS, PAPER_MULTIPLIERS
from rlrs.study.searches import searches

TUNE_PROGRESS_SCHEMA = {
    "study": S,
    "size": S,
    "family": S,
    "arm": S,
    "step": I,
    "pass": I,
    "parameter": S,
    "factor": F,
    "run_id": S,
    "score": F,
    "accepted": pl.Boolean,
    "best_score": F,
    "runs_spent": I,
}


TUNED_SCHEMA = {
    "study": S,
    "size": S,
    "family": S,
    "arm": S,
    "space": S,
    "parameter": S,
    "start_value": F,
    "value": F,
    "paper_value": F,
    "best_score": F,
    "runs_spent": I,
    "stop_reason": S,
}


TUNING_BUDGET_SCHEMA = {
    "size": S,
    "arm": S,
    "space": S,
    "max_runs": I,
    "run_budget": I,
    "runs_spent": I,
    "passes": I,
    "max_passes": I,
    "stop_reason": S,
    "converged": pl.Boolean,
}


# ---------------------------------------------------------------- tables for the report
def study_config(con: duckdb.DuckDBPyConnection, study: str) -> dict:
    """The study's resolved dict as collected (studies.config), {} without one."""
    if not has_table(con, "studies"):
        return {}
    got = con.execute("SELECT config FROM studies WHERE name = ?", [study]).fetchall()
    return json.loads(got[0][0]) if got and got[0][0] else {}


def tuning_budgets(con: duckdb.DuckDBPyConnection, study: str) -> pl.DataFrame:
    """Tuning fairness: each search's budget (max_runs; run_budget = the most
    runs it can spend), the runs it spent, its passes and whether it
    converged (a pass brought no improvement) or stopped on a cap."""
    config = study_config(con, study)
    if not config.get("tune"):
        return frame([], TUNING_BUDGET_SCHEMA)
    done = {}
    if has_table(con, "tuned"):
        got = con.execute(
            "SELECT DISTINCT size, arm, runs_spent, passes, stop_reason FROM tuned WHERE study = ?", [study]
        ).fetchall()
        done = {(r[0], r[1]): r[2:] for r in got}
    rows = []
    for search in searches(config):
        spent, passes, stop = done.get((search.size, search.arm), (None, None, None))
        rows.append(
            {
                "size": search.size,
                "arm": search.arm,
                "space": search.space,
                "max_runs": search.max_runs,
                "run_budget": search.run_budget(),
                "runs_spent": spent,
                "passes": passes,
                "max_passes": search.max_passes,
                "stop_reason": stop,
                "converged": None if stop is None else stop == "converged",
            }
        )
    return frame(rows, TUNING_BUDGET_SCHEMA)


def sizes_table(con: duckdb.DuckDBPyConnection, study: str) -> pl.DataFrame:
    """Model shape and parameter counts per size (any completed run of it)."""
    return con.sql(
        """
        SELECT size, any_value(d_model) AS d_model, any_value(n_layers) AS n_layers,
               bool_or(moe) AS moe, any_value(n_experts) AS n_experts, any_value(top_k) AS top_k,
               any_value(granularity) AS granularity,
               max(params_total) AS params_total, max(params_active) AS params_active,
               max(params_nonembedding) AS params_nonembedding,
               max(params_active_nonembedding) AS params_active_nonembedding
        FROM runs WHERE study = $study AND params_total IS NOT NULL
        GROUP BY size ORDER BY params_nonembedding, size
    """,
        params={"study": study},
    ).pl()


def arm_multipliers(con: duckdb.DuckDBPyConnection, members: pl.DataFrame) -> pl.DataFrame:
    """arm, component, start, end: the multipliers each main arm ran with."""
    main = members.filter(pl.col("sweep") == tags.MAIN).sort("arm", "size", "run_id").unique(subset="arm", keep="first")
    rows = []
    for arm, rid in main.select("arm", "run_id").iter_rows():
        got = con.execute("SELECT CAST(multipliers AS VARCHAR) FROM runs WHERE run_id = ?", [rid]).fetchall()
        for comp, m in (json.loads(got[0][0]) if got and got[0][0] else {}).items():
            rows.append({"arm": arm, "component": comp, "start": float(m["start"]), "end": float(m["end"])})
    return frame(rows, {"arm": S, "component": S, "start": F, "end": F})


def problem_runs(con: duckdb.DuckDBPyConnection, members: pl.DataFrame) -> pl.DataFrame:
    """Every run that did not complete (failed, diverged, or planned and
    missing), with its sweeps and error: listed, never hidden."""
    bad = members.filter(pl.col("status") != "completed")
    return (
        bad.group_by("run_id", maintain_order=True)
        .agg(
            pl.col("size").first(),
            pl.col("arm").first(),
            pl.col("status").first(),
            pl.col("seed").first(),
            pl.col("lr").first(),
            pl.col("steps").first(),
            pl.col("sweep").unique().sort().str.join(",").alias("sweeps"),
            pl.col("error").first(),
        )
        .sort("status", "size", "arm", "run_id")
    )


def provenance(con: duckdb.DuckDBPyConnection, study: str) -> dict[str, pl.DataFrame]:
    """Where the numbers came from: study file, commits, versions, executors, corpus."""
    out = {}
    if has_table(con, "studies"):
        out["study"] = con.sql(
            "SELECT name, file, sha256 FROM studies WHERE name = $study", params={"study": study}
        ).pl()
    out["commits"] = con.sql(
        "SELECT git_commit, count(*) AS runs FROM runs WHERE study = $study GROUP BY 1 ORDER BY 2 DESC",
        params={"study": study},
    ).pl()
    out["versions"] = con.sql(
        "SELECT CAST(versions AS VARCHAR) AS versions, count(*) AS runs FROM runs WHERE study = $study GROUP BY 1 ORDER BY 2 DESC",
        params={"study": study},
    ).pl()
    out["executors"] = con.sql(
        "SELECT executor, host, count(*) AS runs, round(sum(wall_time_s) / 3600, 3) AS wall_hours, "
        "round(sum(cpu_time_s) / 3600, 3) AS cpu_hours, count(cpu_time_s) AS runs_with_cpu_time "
        "FROM runs WHERE study = $study GROUP BY 1, 2 ORDER BY 3 DESC",
        params={"study": study},
    ).pl()
    out["corpus"] = con.sql(
        "SELECT json_extract_string(config, '$.data.corpus') AS corpus, "
        "json_extract_string(config, '$.data.tokenizer') AS tokenizer, count(*) AS runs "
        "FROM runs WHERE study = $study GROUP BY 1, 2 ORDER BY 3 DESC",
        params={"study": study},
    ).pl()
    return out


# ---------------------------------------------------------------- tuning (rlrs.tune)
def tune_progress(con: duckdb.DuckDBPyConnection, study: str) -> pl.DataFrame:
    """Every candidate of the study's searches in search order, with the best
    score so far and the runs spent: the search's progress curve."""
    if not has_table(con, "tune_trajectory"):
        return frame([], TUNE_PROGRESS_SCHEMA)
    cols = ", ".join(f'"{c}"' for c in TUNE_PROGRESS_SCHEMA)
    return (
        con.sql(
            f"SELECT {cols} FROM tune_trajectory WHERE study = $study ORDER BY size, arm, step", params={"study": study}
        )
        .pl()
        .cast(TUNE_PROGRESS_SCHEMA)
    )


def tuned_settings(con: duckdb.DuckDBPyConnection, study: str) -> pl.DataFrame:
    """The searches' final settings beside the paper's tuned values (spec
    section 3; multipliers per family, globals of its MoE config)."""
    if not has_table(con, "tuned"):
        return frame([], TUNED_SCHEMA)
    rows = con.sql("SELECT * FROM tuned WHERE study = $study ORDER BY size, arm", params={"study": study}).pl()
    out = []
    for r in rows.iter_rows(named=True):
        if "." in r["parameter"]:
            comp, which = r["parameter"].split(".")
            paper = PAPER_MULTIPLIERS.get(r["family"], {}).get(comp, {}).get(which)
        else:
            paper = PAPER_GLOBALS.get(r["family"], {}).get(r["parameter"])
        out.append({**r, "paper_value": paper})
    return frame(out, TUNED_SCHEMA)
