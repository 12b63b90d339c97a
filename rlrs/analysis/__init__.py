"""The study's numbers: speedups, transfer, sweeps, regret, ablations.

Frames in, frames out, no charts (spec section 6). Everything reads the
study's DuckDB (tables `runs`, `metrics`, `plan`, `studies` written by
rlrs.db) and returns polars frames with fixed schemas, so a tiny study still
gets every table and view, only with fewer rows.

    members   the study's runs per sweep, seed groups, the best-lr rule
    stats     first crossings (T*)
    estimates seed-paired loss gap (paired-t, Welch beside it), ladder
              speedup with a seed-joint bootstrap
    speedup   speedup, loss gap, transfer
    health, plateau, health_view
              the eight study-health checks, run at collect time (`health`)
    sweeps    final losses, lr sweep, U-plots, ablations
    regret    the transfer regret of every swept parameter
    lr_width  the best base lr against width per (family, parametrization, arm)
    curves    loss curves, update sizes, lr schedules (binned for plots)
    scaling   scaling-law fits of the scaling sweep (laws, fit, frontier, multiplier, study)
    tables    the report's other tables (sizes, multipliers, provenance, tuning)

VIEWS below is the one registry of the analysis views: name -> how it is
computed, its schema and what one row is. `materialize()` (inside `rlrs
collect`'s transaction: the database's one writer) stores each as table
`analysis_<name>` with view `<name>` over it; the report computes the same
frames in memory from a read-only connection (`compute()`).

Conventions used throughout:

- A run's loss is its `final_eval_loss` (the same validation tokens for every
  run). Only runs with status `completed` count; every frame that drops runs
  says how many in a `note` or `n_excluded` column.
- One run id can be asked for by several sweeps (the baseline at its best lr
  sits in `main`, `lr` and `ladder`): membership comes from `plan`, one row
  per (run, sweep), and groups are deduplicated by run id before averaging.
- A "group" is the runs that differ only by seed: same size, arm, lr, steps.
- Best lr: among an arm's groups at one size and length, the lowest mean
  final loss. Groups where a seed diverged are not eligible (that lr is
  unstable; averaging only the surviving seeds would flatter it).

Speedup, two definitions, both as T*/T - 1 ("the baseline needs X% more
steps") and saved = 1 - T/T* ("X% fewer steps"):

- `ladder`: the baseline's final loss L(T) over its run lengths, mean over
  seeds per length, interpolated with a monotone piecewise cubic (PCHIP) in
  log T; T* solves L(T*) = the arm's mean final loss at its length T. PCHIP
  never overshoots the data and never extrapolates; on a constructed power
  law a + b*T^-c it recovers T* within 0.2% (see tests).
- `target`: steps the baseline's eval curve (its longest run, mean over
  seeds, linear between eval points) needs to first reach the arm's loss.

Outside the baseline's range nothing is extrapolated: speedup is NULL and
`bound` says '> x' (arm better than the longest baseline) or '< x' (worse than
the shortest). Intervals (rlrs.analysis.estimates): the loss gap is the mean
of the seed-paired differences with a Student-t interval (Welch's unpaired
interval beside it); a speedup's interval is a percentile bootstrap that
resamples SEEDS jointly across the arm and every baseline length (ladder) or
the baseline's eval curve (target), fixed seed, 2000 resamples, 95%. No
interval below 3 seeds. Every estimate records `method`, `n_pairs` and its
`reference`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field

import duckdb
import polars as pl

from rlrs.analysis import curves, health, health_view, lr_width, members, regret, speedup, sweeps, tables
from rlrs.analysis.scaling import columns as scaling_columns
from rlrs.analysis.scaling import study as scaling_study
from rlrs.db import has_table
from rlrs.db.schema import utc_now
from rlrs.errors import ConfigError


@dataclass
class Inputs:
    """What the views of one study are computed from; `frames` fills in
    registry order, so a view can use the ones above it."""

    con: duckdb.DuckDBPyConnection
    study: str
    members: pl.DataFrame
    baseline: str
    frames: dict[str, pl.DataFrame] = field(default_factory=dict)

    @functools.cached_property
    def estimates(self) -> pl.DataFrame:
        """The speedup and loss-gap estimates, before the health checks."""
        return speedup.speedup(
            self.members, members.baseline_evals(self.con, self.members, self.baseline), self.study, self.baseline
        )


@dataclass(frozen=True)
class View:
    compute: Callable[[Inputs], pl.DataFrame]
    schema: dict
    doc: str  # one row per ...
    columns: dict[str, str] = field(default_factory=dict)  # column docs (COMMENT ON COLUMN), where given


VIEWS: dict[str, View] = {
    # The checks judge the estimates; the `speedup` view is the estimates with
    # what the checks block in each (the one decision the report's table and
    # figures read).
    "health": View(
        lambda x: health_view.health_view(x.con, x.study, x.members, x.estimates, x.baseline),
        health_view.VIEW_SCHEMA,
        "one row per (health check, scope): status pass, warn or fail with value, threshold and a one-line message",
    ),
    "speedup": View(
        lambda x: health.with_blocking(x.estimates, x.frames["health"], x.baseline),
        speedup.SPEEDUP_SCHEMA,
        "one row per (size, arm, definition): speedup T*/T - 1 over the baseline, with CI",
        speedup.KIND_DOC | health.BLOCKED_DOCS,
    ),
    "final_losses_by_arm": View(
        lambda x: sweeps.final_losses(x.members, x.study),
        sweeps.FINAL_LOSSES_SCHEMA,
        "one row per (size, arm, lr, steps) of the main runs: final eval loss over seeds",
    ),
    "transfer": View(
        lambda x: speedup.transfer(x.frames["speedup"]),
        speedup.TRANSFER_SCHEMA,
        "one row per (arm, definition, size): speedup against non-embedding parameters",
        speedup.KIND_DOC | {"speedup_blocked_by": health.BLOCKED_DOCS["speedup_blocked_by"]},
    ),
    "lr_sweep": View(
        lambda x: sweeps.lr_sweep(x.members, x.study),
        sweeps.LR_SWEEP_SCHEMA,
        "one row per (size, arm, lr): final loss against base lr; is_best marks the compared lr",
        sweeps.SHARED_DOCS,
    ),
    "usweep": View(
        lambda x: sweeps.usweep(x.members, x.frames["health"], x.study),
        sweeps.USWEEP_SCHEMA,
        "one row per (size, base arm, component, start or end, factor): the U-plots",
        sweeps.SHARED_DOCS | health.CHECK_DOCS,
    ),
    "regret": View(
        lambda x: regret.regret(x.frames["lr_sweep"], x.frames["usweep"], x.members, x.study),
        regret.REGRET_SCHEMA,
        "one row per (swept parameter, larger size): loss at the small size's best factor minus the best loss",
        regret.REGRET_DOCS,
    ),
    "lr_vs_width": View(
        lambda x: lr_width.lr_vs_width(x.con, x.study, x.members, x.frames["health"]),
        lr_width.SCHEMA,
        "one row per (size, arm) with an lr choice: the best base lr against width, bracketed or not, and the loss at it",
        lr_width.COLUMN_DOCS,
    ),
    "ablation": View(
        lambda x: sweeps.ablation(x.members, x.frames["health"], x.study),
        sweeps.ABLATION_SCHEMA,
        "one row per (size, removal or contribution, component): loss against the reference arm",
        health.CHECK_DOCS,
    ),
    "compared_runs": View(
        lambda x: curves.compared_runs(x.members, x.study, x.baseline),
        curves.COMPARED_SCHEMA,
        "one row per run a size's comparison used, with its role",
    ),
    "loss_curves": View(
        lambda x: curves.loss_curves(x.con, x.frames["compared_runs"], x.study),
        curves.CURVE_SCHEMA,
        "one row per (size, arm, role, step bin): train and eval loss of the compared runs",
    ),
    "update_sizes": View(
        lambda x: curves.update_sizes(x.con, x.members, x.study),
        curves.UPDATE_SCHEMA,
        "one row per (size, arm, component, step bin): relative update size of the main runs",
    ),
    "lr_schedules": View(
        lambda x: curves.lr_schedules(x.con, x.members, x.study),
        curves.SCHEDULE_SCHEMA,
        "one row per (size, arm, component, step bin): the learning rate the trainer applied",
    ),
    "tune_progress": View(
        lambda x: tables.tune_progress(x.con, x.study),
        tables.TUNE_PROGRESS_SCHEMA,
        "one row per candidate run of the study's searches, in search order",
    ),
    "tuned_settings": View(
        lambda x: tables.tuned_settings(x.con, x.study),
        tables.TUNED_SCHEMA,
        "one row per (size, arm, parameter): the search's result beside the paper's value",
    ),
    **{  # the scaling-law fits (rlrs.analysis.scaling.study): computed once, five frames
        name: View(
            lambda x, name=name: _scaling(x, name),
            getattr(scaling_study, schema),
            doc,
            scaling_columns.COLUMN_DOCS[name],
        )
        for name, schema, doc in (
            ("scaling_points", "POINTS_SCHEMA", "one row per (law, family, arm, run): a point a scaling-law fit used"),
            ("scaling_fit", "FIT_SCHEMA", "one row per (law, family, arm, parameter): a scaling-law fit, with CI"),
            (
                "compute_multiplier",
                "MULTIPLIER_SCHEMA",
                "one row per (law, family, arm, compute): the arm's compute multiplier over the baseline, with CI",
            ),
            (
                "scaling_frontier",
                "FRONTIER_SCHEMA",
                "one row per (law, family, arm, compute): the fitted compute-optimal frontier",
            ),
            (
                "scaling_iso_loss",
                "ISO_SCHEMA",
                "one row per (law, family, arm, loss level, N): the fitted law's iso-loss lines in (N, D)",
            ),
        )
    },
}


SCALING_VIEWS = ("scaling_points", "scaling_fit", "compute_multiplier", "scaling_frontier", "scaling_iso_loss")


def _scaling(x: Inputs, name: str) -> pl.DataFrame:
    """The scaling views are fitted together, once per study, by `rlrs
    collect` (the first one asked for fills all five). A reader of a fresh
    database (the report) reads the stored fits instead of refitting: the
    bootstrap refits are the one costly part of the analysis. Stored fits
    without a column this code writes (a database collected before it) are
    refitted."""
    if name not in x.frames:
        stored = {}
        if not is_stale(x.con) and all(has_table(x.con, f"analysis_{n}") for n in SCALING_VIEWS):
            for n in SCALING_VIEWS:
                got = x.con.sql(f"SELECT * FROM analysis_{n} WHERE study = $study", params={"study": x.study}).pl()
                stored[n] = got if set(VIEWS[n].schema) <= set(got.columns) else None
        if stored and all(v is not None for v in stored.values()):
            for n, got in stored.items():
                schema = VIEWS[n].schema
                x.frames[n] = got.select(list(schema)).cast(schema) if got.height else members.frame([], schema)
        else:
            frames = scaling_study.scaling(x.con, x.members, x.study, x.baseline, x.frames["health"])
            x.frames |= dict(
                zip(SCALING_VIEWS, (frames.points, frames.fit, frames.multiplier, frames.frontier, frames.iso_loss))
            )
    return x.frames[name]


def compute(con: duckdb.DuckDBPyConnection, study: str) -> dict[str, pl.DataFrame]:
    """Every analysis frame of one study, keyed by view name (read-only)."""
    names = members.study_names(con)
    if study not in names:
        raise ConfigError("study", f"{study!r} is not in this database; allowed: {', '.join(names) or '(none)'}")
    x = Inputs(con, study, members.load_members(con, study), members.baseline_arm(con, study))
    for name, view in VIEWS.items():
        x.frames[name] = view.compute(x)
    return x.frames


def materialize(con: duckdb.DuckDBPyConnection) -> dict[str, dict[str, pl.DataFrame]]:
    """Compute every study's frames and store them as tables `analysis_<name>`
    with views `<name>` over them. Runs inside the caller's transaction (rlrs
    collect's ingest, the database's one writer): it neither begins nor
    commits. Returns the frames per study."""
    per_study = {s: compute(con, s) for s in members.study_names(con)}
    for name, view in VIEWS.items():
        frame = pl.concat([f[name] for f in per_study.values()]) if per_study else members.frame([], view.schema)
        con.register("_analysis_frame", frame)
        try:
            con.execute(f"CREATE OR REPLACE TABLE analysis_{name} AS SELECT * FROM _analysis_frame")
        finally:
            con.unregister("_analysis_frame")
        con.execute(f"CREATE OR REPLACE VIEW {name} AS SELECT * FROM analysis_{name}")
        con.execute(f"COMMENT ON VIEW {name} IS '{view.doc.replace(chr(39), chr(39) * 2)}'")
        for column, doc in view.columns.items():
            con.execute(f"COMMENT ON COLUMN {name}.\"{column}\" IS '{doc.replace(chr(39), chr(39) * 2)}'")
    # When the views were computed: is_stale() compares it with the last ingest. Naive UTC taken
    # now, after this transaction's own ingest and plan rows (now() would be the transaction's
    # start, before their timestamps, and the views would read as stale right after a collect).
    con.execute("CREATE OR REPLACE TABLE analysis_meta AS SELECT CAST(? AS TIMESTAMP) AS materialized_at", [utc_now()])
    return per_study


def is_stale(con: duckdb.DuckDBPyConnection) -> bool:
    """True when the analysis views are missing or older than the newest
    ingested run or collected plan (materialize stamps the views after the
    rows of its own ingest, so a hook run by that same ingest counts as
    fresh)."""
    if not has_table(con, "analysis_meta"):
        return True
    newest = (
        "greatest((SELECT max(ingested_at) FROM runs), (SELECT max(collected_at) FROM studies))"
        if has_table(con, "studies")
        else "(SELECT max(ingested_at) FROM runs)"
    )
    # Compared in SQL: fetching a TIMESTAMPTZ into Python would need pytz.
    return bool(
        con.execute(f"SELECT coalesce((SELECT max(materialized_at) FROM analysis_meta) < {newest}, false)").fetchall()[
            0
        ][0]
    )
