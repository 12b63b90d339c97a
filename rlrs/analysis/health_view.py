"""The `health` view: the eight checks of rlrs.analysis.health (and
rlrs.analysis.plateau, rlrs.analysis.scaling_lr) run on one study's
database, at collect time.

Inputs, read from the database:
- the compared cells: each (size, arm)'s compared group (its chosen lr at
  its main length, rlrs.analysis.members.compared_group) as sweep 'main',
  and the baseline's ladder at its chosen lr as sweep 'ladder';
  tokens = steps x batch_size x seq_len (the run's config), and for MoE
  runs dropped_frac_last = mean `dropped_frac` over the last 10% of steps;
- their eval curves (metrics.eval_loss);
- the lr choices: table `lr_selection` when the study has a selection stage,
  else the lr sweep as it ran, judged by bracketing.select_lr with
  max_extra_points=0 over each cell's main and lr-sweep runs (a diverged
  seed counts as +inf); the same for the cells of the scaling sweep
  (check 2's scaling_lr), at the lr sweep's longest length where a cell has
  no main runs;
- the scaling sweep's completed runs (size, family, arm, lr);
- the ladder rows of the `speedup` view;
- the seed lists from the studies table's config: `seeds` (reported),
  `selection_seeds` (else those of lr_selection's rows; else, when the
  study swept lr, the lr was chosen on the reported seeds: they are its
  selection seeds), `tune.seed`;
- the thresholds: the study's `health:` block over health.SETTINGS.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence

import duckdb
import polars as pl

from rlrs import tags
from rlrs.analysis import health, health_checks, members
from rlrs.analysis.members import F, I, S, frame
from rlrs.analysis.plateau import plateau
from rlrs.analysis.scaling_lr import scaling_lr
from rlrs.db import has_table
from rlrs.study.bracketing import select_lr

VIEW_SCHEMA = {"study": S, **health.HEALTH_SCHEMA}
RUNS_SCHEMA = {
    "run_id": S,
    "size": S,
    "family": S,
    "parametrization": S,
    "arm": S,
    "sweep": S,
    "seed": I,
    "steps": I,
    "lr": F,
    "final_eval_loss": F,
    "params_active_nonembedding": I,
    "tokens": I,
    "dropped_frac_last": F,
}
CHOICE_SCHEMA = {
    "size": S,
    "family": S,
    "arm": S,
    "lr": F,
    "bracketed": pl.Boolean,
    "cap_reached": pl.Boolean,
    "n_points": I,
    "failed": pl.Boolean,
    "note": S,
}
SCALING_SCHEMA = {"size": S, "family": S, "arm": S, "lr": F}
_CONTRACTS = {
    "runs": tuple(c for c in RUNS_SCHEMA if c != "parametrization"),  # optional: sp
    "curves": ("run_id", "step", "eval_loss"),
    "lr_choices": ("size", "family", "arm", "lr", "bracketed", "cap_reached"),
    "speedups": ("size", "family", "arm", "speedup", "bound"),
}


def study_health(
    runs: pl.DataFrame,
    curves: pl.DataFrame,
    lr_choices: pl.DataFrame,
    speedups: pl.DataFrame,
    seeds: Sequence[int],
    selection_seeds: Sequence[int] | None,
    tune_seeds: Sequence[int] = (),
    *,
    overrides: Mapping | None = None,
    baseline: str = "baseline",
    scaling: pl.DataFrame | None = None,
    scaling_choices: pl.DataFrame | None = None,
) -> list[dict]:
    """Every check's rows, in check order (frames as in rlrs.analysis.health;
    `scaling`, `scaling_choices`: the SCALING frame and the LR_CHOICES of its
    cells, for check 2's scaling_lr; None: no scaling sweep)."""
    for name, part in {"runs": runs, "curves": curves, "lr_choices": lr_choices, "speedups": speedups}.items():
        missing = [c for c in _CONTRACTS[name] if c not in part.columns]
        if missing:
            raise ValueError(f"{name}: missing column(s) {', '.join(missing)}; expected {', '.join(_CONTRACTS[name])}")
    s = health.settings(overrides)
    rows = (
        health_checks.loss_falls_with_size(runs, s)
        + health_checks.lr_bracketed(lr_choices)
        + (scaling_lr(scaling, scaling_choices) if scaling is not None else [])
        + health_checks.ladder_brackets_arm(speedups)
        + health_checks.tokens_per_param(runs, s)
        + plateau(runs, curves, s)
        + health_checks.moe_vs_dense(runs, s, baseline)
        + health_checks.dropped_tokens(runs, s)
        + health_checks.seeds_per_cell(runs, s, baseline)
        + health_checks.effect_vs_noise(runs, baseline)
        + health_checks.seeds_disjoint(seeds, selection_seeds, tune_seeds)
    )
    return health.sort_rows(rows)


# ---------------------------------------------------------------- inputs from the database
def compared_runs(con: duckdb.DuckDBPyConnection, study_members: pl.DataFrame, baseline: str) -> pl.DataFrame:
    """The RUNS frame: every arm's compared group and the baseline's ladder."""
    family = members.size_family(study_members)
    arms = sorted(set(study_members.filter(pl.col("sweep") == tags.MAIN)["arm"].drop_nulls().to_list()))
    picked = []  # (run_id, size, arm, sweep)
    for size in members.size_order(study_members):
        for arm in arms:
            group = members.compared_group(study_members, size, arm)
            if group is None:
                continue
            picked += [(rid, size, arm, "main") for rid in group.run_ids]
            if arm == baseline:
                picked += [
                    (rid, size, arm, "ladder")
                    for g in members.baseline_ladder(study_members, size, baseline)
                    if g.steps != group.steps
                    for rid in g.run_ids
                ]
    if not picked:
        return frame([], RUNS_SCHEMA)
    con.register("_health_ids", pl.DataFrame(picked, schema=["run_id", "size", "arm", "sweep"], orient="row"))
    try:
        got = con.sql("""
            SELECT h.run_id, h.size, h.arm, h.sweep, r.seed, r.steps, r.lr, r.final_eval_loss,
                   r.params_active_nonembedding, coalesce(r.steps * r.batch_size * r.seq_len, r.tokens) AS tokens,
                   (SELECT avg(m.dropped_frac) FROM metrics m
                    WHERE m.run_id = h.run_id AND r.moe AND m.step >= 0.9 * r.steps) AS dropped_frac_last
            FROM _health_ids h JOIN runs r USING (run_id)
            WHERE r.status = 'completed'
            ORDER BY h.size, h.arm, h.sweep, r.steps, r.seed""").pl()
    finally:
        con.unregister("_health_ids")
    got = got.with_columns(
        pl.col("size").replace_strict(family, default=None).alias("family"),
        pl.col("size")
        .replace_strict(members.size_parametrization(study_members), default="sp")
        .alias("parametrization"),
    )
    return frame(got.to_dicts(), RUNS_SCHEMA)


def eval_curves(con: duckdb.DuckDBPyConnection, run_ids: list[str]) -> pl.DataFrame:
    con.register("_health_curve_ids", pl.DataFrame({"run_id": sorted(set(run_ids))}, schema={"run_id": S}))
    try:
        return con.sql(
            "SELECT run_id, step, eval_loss FROM metrics JOIN _health_curve_ids USING (run_id) "
            "WHERE eval_loss IS NOT NULL ORDER BY run_id, step"
        ).pl()
    finally:
        con.unregister("_health_curve_ids")


def lr_choices(
    con: duckdb.DuckDBPyConnection, study: str, study_members: pl.DataFrame, runs: pl.DataFrame
) -> pl.DataFrame:
    """The LR_CHOICES frame: lr_selection's rows, else the sweep as run."""
    if has_table(con, "lr_selection"):
        got = con.sql(
            "SELECT size, family, arm, chosen_lr AS lr, bracketed, cap_reached, n_points, failed, note FROM lr_selection "
            "WHERE study = $study ORDER BY size, arm",
            params={"study": study},
        ).pl()
        if got.height:
            return frame(got.to_dicts(), CHOICE_SCHEMA)
    rows = []
    for size, family, arm in (
        runs.filter(pl.col("sweep") == "main").select("size", "family", "arm").unique(maintain_order=True).iter_rows()
    ):
        swept = study_members.filter(
            (pl.col("size") == size) & (pl.col("arm") == arm) & pl.col("sweep").is_in(tags.LR_SWEEPS)
        )
        # At the main length; a cell without main runs (a scaling size) at its lr sweep's longest.
        steps = members.main_steps(study_members, size, arm) or swept["steps"].max()
        cand = swept.filter(
            (pl.col("steps") == (steps or 0)) & pl.col("status").is_in(["completed", "diverged"])
        ).unique("run_id")
        results: dict[float, dict[int, float]] = {}
        for lr, seed, status, loss in cand.select("lr", "seed", "status", "final_eval_loss").iter_rows():
            results.setdefault(lr, {})[seed] = loss if status == "completed" else math.inf
        at = {"size": size, "family": family, "arm": arm, "n_points": len(results)}
        if len(results) < 2:
            rows.append(at | {"lr": next(iter(results), None), "bracketed": False, "cap_reached": False})
            continue
        seeds = sorted({s for r in results.values() for s in r})
        got = select_lr(sorted(results), 2.0, results, seeds, max_extra_points=0)
        rows.append(at | {k: got[k] for k in ("lr", "bracketed", "failed", "note")} | {"cap_reached": False})
    return frame(rows, CHOICE_SCHEMA)


def scaling_cells(study_members: pl.DataFrame) -> pl.DataFrame:
    """The SCALING frame: size, family, arm, lr of each completed scaling run."""
    runs = members.completed(study_members.filter(pl.col("sweep") == tags.SCALING)).unique(["run_id", "arm"])
    family = members.size_family(study_members)
    runs = runs.with_columns(pl.col("size").replace_strict(family, default=None).alias("family"))
    return frame(runs.sort("size", "arm", "lr").select(list(SCALING_SCHEMA)).to_dicts(), SCALING_SCHEMA)


def seed_lists(
    con: duckdb.DuckDBPyConnection, study: str, study_members: pl.DataFrame
) -> tuple[list[int], list[int] | None, list[int], dict]:
    """(reported seeds, selection seeds, tuning seeds, health overrides) from the study's config."""
    config = {}
    if has_table(con, "studies"):
        got = con.execute("SELECT config FROM studies WHERE name = ?", [study]).fetchall()
        config = json.loads(got[0][0]) if got and got[0][0] else {}
    main = study_members.filter(pl.col("sweep") == tags.MAIN)
    seeds = config.get("seeds") or sorted(set(main["seed"].drop_nulls().to_list()))
    selection = config.get("selection_seeds")
    if selection is None and has_table(con, "lr_selection"):
        got = con.execute("SELECT selection_seeds FROM lr_selection WHERE study = ?", [study]).fetchall()
        if got:
            selection = sorted({int(s) for (seeds,) in got for s in json.loads(seeds or "[]")})
    if selection is None and (study_members["sweep"] == tags.LR).any():
        selection = list(seeds)  # the lr was chosen on the reported seeds
    tune = config.get("tune") or {}
    return list(seeds), selection, [int(tune.get("seed", 0))] if tune else [], dict(config.get("health") or {})


def health_view(
    con: duckdb.DuckDBPyConnection, study: str, study_members: pl.DataFrame, speedup: pl.DataFrame, baseline: str
) -> pl.DataFrame:
    """The `health` rows of one study."""
    runs = compared_runs(con, study_members, baseline)
    curves = eval_curves(con, runs["run_id"].to_list())
    choices = lr_choices(con, study, study_members, runs)
    ladder = speedup.filter(pl.col("definition") == "ladder").select("size", "family", "arm", "speedup", "bound")
    seeds, selection, tune, overrides = seed_lists(con, study, study_members)
    scaling = scaling_cells(study_members)
    cells = scaling.select("size", "family", "arm").unique(maintain_order=True).with_columns(sweep=pl.lit("main"))
    rows = study_health(
        runs,
        curves,
        choices,
        ladder,
        seeds,
        selection,
        tune,
        overrides=overrides,
        baseline=baseline,
        scaling=scaling if scaling.height else None,
        scaling_choices=lr_choices(con, study, study_members, cells),
    )
    return frame([{"study": study} | r for r in rows], VIEW_SCHEMA)
