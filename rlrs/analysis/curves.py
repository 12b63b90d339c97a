"""Curves for the report's figures, binned in DuckDB so that only the
plotted points reach Python: the compared runs' loss curves, per-component
update sizes (the paper's Figure 1) and learning-rate schedules."""

from __future__ import annotations

import duckdb
import polars as pl

from rlrs import tags
from rlrs.analysis.members import (
    BASELINE,
    F,
    Group,
    I,
    S,
    baseline_ladder,
    compared_group,
    completed,
    frame,
    main_steps,
    size_order,
)

# Rows per chart stay well under Altair's 5,000-row limit whatever the study size.
ROW_BUDGET = 4000


MAX_POINTS_PER_SERIES = 200


MIN_POINTS_PER_SERIES = 10

COMPARED_SCHEMA = {
    "study": S,
    "size": S,
    "arm": S,
    "role": S,
    "run_id": S,
    "lr": F,
    "steps": I,
    "seed": I,
}


CURVE_SCHEMA = {
    "study": S,
    "size": S,
    "arm": S,
    "role": S,
    "label": S,
    "step": I,
    "train_loss": F,
    "eval_loss": F,
    "n_runs": I,
    "run_ids": S,
}


UPDATE_SCHEMA = {"study": S, "size": S, "arm": S, "component": S, "step": I, "update": F, "n_runs": I}


SCHEDULE_SCHEMA = {"study": S, "size": S, "arm": S, "component": S, "step": I, "lr": F, "run_id": S}


# ---------------------------------------------------------------- curves
def compared_runs(members: pl.DataFrame, study: str = "", baseline: str = BASELINE) -> pl.DataFrame:
    """Which runs each size's comparison used: every arm at its compared lr
    (role `arm`), the baseline at the main length (`baseline`) and the
    baseline's longest run whose eval curve the target definition reads
    (`baseline_longest`, when longer)."""
    rows = []
    main_arms = sorted(set(members.filter(pl.col("sweep") == tags.MAIN)["arm"].to_list()))
    for size in size_order(members):
        ladder = baseline_ladder(members, size, baseline)
        picked: list[tuple[str, str, Group]] = []
        for arm in main_arms:
            g = compared_group(members, size, arm)
            if g is not None:
                picked.append((arm, "baseline" if arm == baseline else "arm", g))
        main_len = main_steps(members, size, baseline)
        if ladder and ladder[-1].steps != main_len:
            picked.append((baseline, "baseline_longest", ladder[-1]))
        for arm, role, g in picked:
            for rid, seed in zip(g.run_ids, g.seeds):
                rows.append(
                    {
                        "study": study,
                        "size": size,
                        "arm": arm,
                        "role": role,
                        "run_id": rid,
                        "lr": g.lr,
                        "steps": g.steps,
                        "seed": seed,
                    }
                )
    return frame(rows, COMPARED_SCHEMA)


def points_per_series(n_series: int) -> int:
    """Downsampling so that n_series curves together stay within ROW_BUDGET."""
    if n_series <= 0:
        return MAX_POINTS_PER_SERIES
    return max(MIN_POINTS_PER_SERIES, min(MAX_POINTS_PER_SERIES, ROW_BUDGET // n_series))


def _metric_columns(con: duckdb.DuckDBPyConnection, prefix: str) -> list[str]:
    cols = [r[0] for r in con.execute("DESCRIBE metrics").fetchall()]
    return [c for c in cols if c.startswith(prefix)]


def _binned(
    con, runs: pl.DataFrame, series: list[str], values: list[str], points: int, where: str = ""
) -> pl.DataFrame:
    """Mean of metric `values` per series and step bin: each series' steps
    are cut into `points` equal bins, averaging over the bin and its seeds.
    The step reported is the bin's last step trained (step + 1)."""
    keys = ", ".join(series)
    vals = ", ".join(f"avg(m.{v}) AS {v}" for v in values)
    con.register("_runs", runs)
    try:
        return con.sql(f"""
            WITH m AS (
                SELECT r.*, m.step, {", ".join(f"m.{v}" for v in values)}
                FROM metrics m JOIN _runs r USING (run_id) {where}
            ), w AS (
                SELECT {keys}, greatest(1, ceil((max(step) + 1) / {points}))::BIGINT AS stride
                FROM m GROUP BY {keys}
            )
            SELECT {", ".join(f"m.{k}" for k in series)}, (max(m.step) + 1)::BIGINT AS step,
                   {vals}, count(DISTINCT m.run_id)::BIGINT AS n_runs,
                   string_agg(DISTINCT m.run_id, ',' ORDER BY m.run_id) AS run_ids
            FROM m JOIN w USING ({keys})
            GROUP BY {", ".join(f"m.{k}" for k in series)}, m.step // w.stride
            ORDER BY {", ".join(f"m.{k}" for k in series)}, step
        """).pl()
    finally:
        con.unregister("_runs")


def loss_curves(con: duckdb.DuckDBPyConnection, compared: pl.DataFrame, study: str = "") -> pl.DataFrame:
    """Train loss (binned means) and eval loss (means over seeds at the
    eval steps) of the compared runs, per size and arm."""
    if compared.is_empty():
        return frame([], CURVE_SCHEMA)
    runs = compared.with_columns(
        pl.when(pl.col("role") == "baseline_longest")
        .then(pl.format("{} ({} steps)", pl.col("arm"), pl.col("steps")))
        .otherwise(
            pl.format("{} (lr {})", pl.col("arm"), pl.col("lr").map_elements(lambda x: f"{x:g}", return_dtype=pl.Utf8))
        )
        .alias("label")
    ).select("size", "arm", "role", "label", "run_id")
    series = ["size", "arm", "role", "label"]
    n_series = runs.select(series).unique().height
    train = _binned(con, runs, series, ["train_loss"], points_per_series(2 * n_series))
    evals = _binned(con, runs, series, ["eval_loss"], points_per_series(2 * n_series), "WHERE m.eval_loss IS NOT NULL")
    out = pl.concat(
        [
            train.with_columns(pl.lit(None, pl.Float64).alias("eval_loss")),
            evals.with_columns(pl.lit(None, pl.Float64).alias("train_loss")),
        ],
        how="diagonal",
    )
    return out.with_columns(pl.lit(study).alias("study")).select(list(CURVE_SCHEMA)).cast(CURVE_SCHEMA)


def update_sizes(con: duckdb.DuckDBPyConnection, members: pl.DataFrame, study: str = "") -> pl.DataFrame:
    """Relative update size ||dW||/||W|| per component over training, mean
    over the main runs' seeds per (size, arm): the paper's Figure 1."""
    cols = _metric_columns(con, "update_")
    runs = completed(members.filter(pl.col("sweep") == tags.MAIN)).select("size", "arm", "run_id").unique()
    if not cols or runs.is_empty():
        return frame([], UPDATE_SCHEMA)
    # Long format first, so a component missing from a model (ffn in an MoE)
    # just has no rows instead of a null column; binned in DuckDB, so only
    # the plotted points reach Python (every step of every main run would not).
    n_series = runs.select("size", "arm").unique().height * len(cols)
    points = points_per_series(n_series)
    con.register("_upd_runs", runs)
    try:
        out = con.sql(f"""
            WITH long AS (
                SELECT r.size, r.arm, m.run_id, m.step, u.component, u.value
                FROM metrics m JOIN _upd_runs r USING (run_id),
                LATERAL (SELECT * FROM (VALUES {", ".join(f"('{c[7:]}', m.{c})" for c in cols)}) t(component, value)) u
                WHERE u.value IS NOT NULL
            ), w AS (
                SELECT size, arm, component, greatest(1, ceil((max(step) + 1) / {points}))::BIGINT AS stride
                FROM long GROUP BY size, arm, component
            )
            SELECT l.size, l.arm, l.component, (max(l.step) + 1)::BIGINT AS step, avg(l.value) AS "update",
                   count(DISTINCT l.run_id)::BIGINT AS n_runs
            FROM long l JOIN w USING (size, arm, component)
            GROUP BY l.size, l.arm, l.component, l.step // w.stride
            ORDER BY l.size, l.arm, l.component, step
        """).pl()
    finally:
        con.unregister("_upd_runs")
    if out.is_empty():
        return frame([], UPDATE_SCHEMA)
    return out.with_columns(pl.lit(study).alias("study")).select(list(UPDATE_SCHEMA)).cast(UPDATE_SCHEMA)


def lr_schedules(con: duckdb.DuckDBPyConnection, members: pl.DataFrame, study: str = "") -> pl.DataFrame:
    """lr_<component>(t) as the trainer applied it: one completed main run
    per arm (first seed) at the smallest size of each model family (dense,
    MoE), since a study may give each family its own multiplier table."""
    cols = _metric_columns(con, "lr_")
    main = completed(members.filter(pl.col("sweep") == tags.MAIN))
    if not cols or main.is_empty():
        return frame([], SCHEDULE_SCHEMA)
    order = size_order(main)
    sizes = []
    for _, family in main.group_by("moe"):
        arms = set(family["arm"])
        in_family = [s for s in order if s in set(family["size"])]
        # The smallest size where every arm of the family ran, else its smallest.
        sizes.append(
            next((s for s in in_family if set(family.filter(pl.col("size") == s)["arm"]) == arms), in_family[0])
        )
    picks = (
        main.filter(pl.col("size").is_in(sizes))
        .sort("size", "arm", "seed", "run_id")
        .unique(subset=["size", "arm"], keep="first")
        .select("size", "arm", "run_id")
    )
    n_series = picks.height * len(cols)
    wide = _binned(con, picks, ["size", "arm", "run_id"], cols, points_per_series(n_series))
    long = wide.unpivot(index=["size", "arm", "run_id", "step"], on=cols, variable_name="component", value_name="lr")
    long = long.drop_nulls("lr").with_columns(pl.col("component").str.slice(3), pl.lit(study).alias("study"))
    return long.select(list(SCHEDULE_SCHEMA)).cast(SCHEDULE_SCHEMA).sort("size", "arm", "component", "step")
