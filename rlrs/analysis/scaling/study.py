"""A study's scaling sweep fitted: its runs as points, one fit per (law,
family, arm, fixed shape), and the frames of the views `scaling_points`,
`scaling_fit`, `compute_multiplier`, `scaling_frontier` and `scaling_iso_loss`.

Which laws are fitted, per model family (dense, moe) and arm, on the
completed runs of the `scaling` sweep (one point per run: N its parameter
count of the law's kind, D its training tokens, L its final eval loss):

- `chinchilla` at every (E, G) shape of the family that has enough runs;
- `joint_moe` when the family has runs at >= 2 expert counts (at its most
  common granularity);
- `fine_grained` when it has runs at >= 2 granularities (at its most common E).

A fit needs more training points than the law has parameters (else it is
left out and `scaling_fit` has no rows for it). The settings (the study's
`scaling:` block, defaults in SETTINGS) say which parameter count each law
uses, the Huber delta, the hold-out (the fit's largest-compute runs), the
bootstrap resamples and the named extrapolation budget; every row carries
`n_kind`. Points are ordered by (N, D, E, G, run id) and every fit of a study
uses the same bootstrap seed, so an arm and the baseline trained on the same
grid are resampled in the same cells (a paired bootstrap).

Every point, fit and multiplier row names the failed and warned health
checks of the (family, size, arm) cells of the runs it rests on
(rlrs.analysis.health.named_checks, estimate 'scaling'): a number under a
failed check (a point whose lr was not the bracketed best at its size,
check 2's scaling_lr, among them) is qualified by it, not a result.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import duckdb
import numpy as np
import polars as pl

from rlrs import tags
from rlrs.analysis import health
from rlrs.analysis.members import F, I, S, completed, frame
from rlrs.analysis.scaling.fit import Fit, fit_law
from rlrs.analysis.scaling.frontier import compute_optimal, frontier_loss, tokens_for_loss
from rlrs.analysis.scaling.laws import Points, get_law
from rlrs.analysis.scaling.multiplier import compute_multiplier
from rlrs.db import has_table

B = pl.Boolean
N_KINDS = {
    "total": "params_total",
    "active": "params_active",
    "nonembedding": "params_nonembedding",
    "active_nonembedding": "params_active_nonembedding",
}
# Defaults of the study's `scaling:` block (workflow/schemas/study.schema.yaml).
SETTINGS = {
    "n_params": {"chinchilla": "nonembedding", "fine_grained": "nonembedding", "joint_moe": "active"},
    "huber_delta": 1e-3,
    "holdout": 0.15,
    "bootstrap": 200,
    "starts": 10,
    "extrapolate_to": None,  # None: 100x the study's largest run compute
    "tokens_per_param": {},
    "tokens": {},
    "seed": 0,
}
EXTRAPOLATE_FACTOR = 100.0
GRID_POINTS = 24  # budgets of the frontier and the multiplier, log-spaced
ISO_POINTS = 30
ISO_LEVELS = 6

_KEY = {"study": S, "law": S, "family": S, "arm": S, "n_kind": S, "experts": F, "granularity": F}
# What qualifies each number (rlrs.analysis.health.named_checks, estimate
# 'scaling'): a point, its (family, size, arm) cell's checks; a fit, those of
# every cell among its points; a multiplier, those of both fits' cells.
_CHECKS = {c: S for c in health.CHECK_COLUMNS}
POINTS_SCHEMA = _KEY | {
    "run_id": S,
    "n_params": F,
    "tokens": F,
    "tokens_per_param": F,
    "compute": F,
    "loss": F,
    "fitted": F,
    "held_out": B,
    "size": S,
    **_CHECKS,
}
FIT_SCHEMA = _KEY | {
    "parameter": S,
    "value": F,
    "ci_low": F,
    "ci_high": F,
    "rmse_train": F,
    "rmse_heldout": F,
    "n_points": I,
    "n_heldout": I,
    "huber_delta": F,
    **_CHECKS,
}
MULTIPLIER_SCHEMA = _KEY | {
    "baseline": S,
    "compute": F,
    "multiplier": F,
    "ci_low": F,
    "ci_high": F,
    "extrapolated": B,
    **_CHECKS,
}
FRONTIER_SCHEMA = _KEY | {
    "compute": F,
    "loss": F,
    "loss_low": F,
    "loss_high": F,
    "n_opt": F,
    "d_opt": F,
    "extrapolated": B,
}
ISO_SCHEMA = _KEY | {"level": F, "n_params": F, "tokens": F}


def settings(con: duckdb.DuckDBPyConnection, study: str) -> dict:
    """The study's `scaling:` block over SETTINGS (from the collected study config)."""
    raw = None
    if has_table(con, "studies"):
        got = con.execute("SELECT json_extract(config, '$.scaling') FROM studies WHERE name = ?", [study]).fetchall()
        raw = json.loads(got[0][0]) if got and got[0][0] else None
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in SETTINGS.items()}
    for k, v in (raw or {}).items():
        out[k] = out[k] | v if isinstance(out.get(k), dict) else v
    return out


@dataclass
class Group:
    """The points of one fit: (law, family, arm) at one fixed shape."""

    law: str
    family: str
    arm: str
    experts: float | None  # the fixed E (chinchilla, fine_grained), None where E varies
    granularity: float | None  # the fixed G (chinchilla, joint_moe), None where G varies
    rows: pl.DataFrame


def load_points(con: duckdb.DuckDBPyConnection, members: pl.DataFrame) -> pl.DataFrame:
    """The scaling sweep's completed runs (one row per run id and arm) with
    their parameter counts, E and G (E = 1, G = 1 for dense runs)."""
    runs = completed(members.filter(pl.col("sweep") == tags.SCALING)).unique(["run_id", "arm"]).sort("run_id")
    cols = ["run_id", "size", "arm", "final_eval_loss", "tokens", *N_KINDS.values(), "moe"]
    runs = runs.select(cols)
    if runs.is_empty():
        return runs.with_columns(experts=pl.lit(None, F), granularity=pl.lit(None, F))
    shape = con.execute(
        "SELECT run_id, CAST(coalesce(n_experts, 1) AS DOUBLE), CAST(coalesce(granularity, 1) AS DOUBLE) "
        "FROM runs WHERE list_contains(?, run_id)",
        [runs["run_id"].to_list()],
    ).fetchall()
    shapes = pl.DataFrame(shape, schema={"run_id": S, "experts": F, "granularity": F}, orient="row")
    return runs.join(shapes, on="run_id", how="left")


def _mode(values: pl.Series) -> float:
    counts = values.value_counts(sort=True)
    return float(counts.sort(["count", values.name], descending=[True, False])[values.name][0])


def groups(points: pl.DataFrame) -> list[Group]:
    """Every fit the study's points allow, in a stable order."""
    out = []
    for (family, arm), rows in sorted(
        points.with_columns(family=pl.when(pl.col("moe")).then(pl.lit("moe")).otherwise(pl.lit("dense")))
        .partition_by(["family", "arm"], as_dict=True)
        .items()
    ):
        n_e, n_g = rows["experts"].n_unique(), rows["granularity"].n_unique()
        for (e, g), shaped in sorted(rows.partition_by(["experts", "granularity"], as_dict=True).items()):
            out.append(Group("chinchilla", family, arm, e, g, shaped))
        if n_e >= 2:
            g = _mode(rows["granularity"])
            out.append(Group("joint_moe", family, arm, None, g, rows.filter(pl.col("granularity") == g)))
        if n_g >= 2:
            e = _mode(rows["experts"])
            out.append(Group("fine_grained", family, arm, e, None, rows.filter(pl.col("experts") == e)))
    return out


def _within(values: pl.Series, regime: dict) -> pl.Series:
    return (values >= regime.get("min", 0.0)) & (values <= regime.get("max", np.inf))


def _points(group: Group, n_kind: str, cfg: dict) -> Points | None:
    """The group's points in the fitted regime: runs with D / N within
    `tokens_per_param` and D within `tokens` (both {min, max}, inclusive)."""
    rows = group.rows.drop_nulls([N_KINDS[n_kind], "tokens", "final_eval_loss"])
    tpp = rows["tokens"] / rows[N_KINDS[n_kind]]
    rows = rows.filter(_within(tpp, cfg["tokens_per_param"]) & _within(rows["tokens"], cfg["tokens"]))
    rows = rows.sort([N_KINDS[n_kind], "tokens", "experts", "granularity", "run_id"])
    if rows.is_empty():
        return None
    third = {"chinchilla": {}, "joint_moe": {"e": rows["experts"].to_numpy()}}
    third["fine_grained"] = {"g": rows["granularity"].to_numpy()}
    return Points(
        rows[N_KINDS[n_kind]].to_numpy().astype(float),
        rows["tokens"].to_numpy().astype(float),
        rows["final_eval_loss"].to_numpy(),
        run_id=rows["run_id"].to_list(),
        **third[group.law],
    )


def _holdout(setting, m: int) -> int:
    return int(setting) if isinstance(setting, int) else int(round(setting * m))


@dataclass
class Fitted:
    group: Group
    fit: Fit

    def key(self, study: str) -> dict:
        g = self.group
        return {"study": study, "law": g.law, "family": g.family, "arm": g.arm, "n_kind": self.fit.n_kind} | {
            "experts": _moe_only(g.family, g.experts),
            "granularity": _moe_only(g.family, g.granularity),
        }

    def at_values(self) -> list[float | None]:
        """The fixed E or G the derived quantities are given at."""
        needs = get_law(self.group.law).needs
        return [None] if needs is None else sorted(set(getattr(self.fit.points, needs).tolist()))

    def shape_of(self, at) -> dict:
        """The (experts, granularity) of one `at` value."""
        needs, g = get_law(self.group.law).needs, self.group
        return {"experts": _moe_only(g.family, at if needs == "e" else g.experts)} | {
            "granularity": _moe_only(g.family, at if needs == "g" else g.granularity)
        }


def _moe_only(family: str, value):
    """E and G are NULL for dense runs (the fits treat them as E = G = 1)."""
    return None if family == "dense" else value


def fit_groups(points: pl.DataFrame, cfg: dict) -> list[Fitted]:
    out = []
    for group in groups(points):
        n_kind = cfg["n_params"][group.law]
        pts = _points(group, n_kind, cfg)
        if pts is None:
            continue
        k = _holdout(cfg["holdout"], len(pts))
        if len(pts) - k <= len(get_law(group.law).params):
            continue  # too few runs to fit this law (and to hold some out)
        fit = fit_law(
            group.law,
            pts,
            arm=group.arm,
            n_kind=n_kind,
            holdout=k,
            delta=cfg["huber_delta"],
            n_starts=cfg["starts"],
            n_bootstrap=cfg["bootstrap"],
            seed=cfg["seed"],
        )
        out.append(Fitted(group, fit))
    return out


def budgets(fits: list[Fitted], cfg: dict) -> np.ndarray:
    """The compute grid of the frontier and the multiplier: from the smallest
    run's compute to the named extrapolation budget."""
    computes = np.concatenate([f.fit.points.compute for f in fits])
    top = cfg["extrapolate_to"] or EXTRAPOLATE_FACTOR * computes.max()
    return np.unique(np.append(np.geomspace(computes.min(), max(top, computes.max()), GRID_POINTS), top))


@dataclass
class Frames:
    points: pl.DataFrame
    fit: pl.DataFrame
    multiplier: pl.DataFrame
    frontier: pl.DataFrame
    iso_loss: pl.DataFrame


def empty() -> Frames:
    return Frames(*(frame([], s) for s in (POINTS_SCHEMA, FIT_SCHEMA, MULTIPLIER_SCHEMA, FRONTIER_SCHEMA, ISO_SCHEMA)))


def scaling(con: duckdb.DuckDBPyConnection, members: pl.DataFrame, study: str, baseline: str, health_rows) -> Frames:
    """Every scaling frame of one study (empty frames without a scaling
    sweep); `health_rows`: the study's `health` rows, whose checks that
    qualify the scaling points are named beside every point, fit and
    multiplier (_CHECKS)."""
    points = load_points(con, members)
    if points.is_empty():
        return empty()
    cfg = settings(con, study)
    fits = fit_groups(points, cfg)
    if not fits:
        return empty()
    grid = budgets(fits, cfg)
    rows = health_rows.to_dicts() if isinstance(health_rows, pl.DataFrame) else list(health_rows)
    size_of = dict(zip(zip(points["run_id"], points["arm"]), points["size"]))
    cells = {
        id(f): {(f.group.family, size_of[(r, f.group.arm)], f.group.arm) for r in f.fit.points.run_id} for f in fits
    }
    checks = lambda *cs: health.named_checks(rows, set().union(*cs), "scaling")  # noqa: E731
    pts, fit_rows, mult, front, iso = [], [], [], [], []
    for f in fits:
        key = f.key(study)
        fitted = f.fit.predict(f.fit.points)
        for row, value in zip(f.fit.point_rows(), fitted):
            size = size_of[(row["run_id"], f.group.arm)]
            pts.append(
                key
                | row
                | {"compute": 6.0 * row["n_params"] * row["tokens"], "fitted": float(value), "size": size}
                | checks({(f.group.family, size, f.group.arm)})
            )
            if f.group.family == "moe":
                pts[-1] |= {k: row[k] for k in ("experts", "granularity") if row[k] is not None}
        extra = {"n_heldout": int(f.fit.held_out.sum()), "huber_delta": f.fit.delta} | checks(cells[id(f)])
        at = None if get_law(f.group.law).needs is None else f.at_values()
        fit_rows += [key | r | extra for r in f.fit.rows(budgets=[float(grid[-1])], at=at)]
        for a in f.at_values():
            front += _frontier(f, key | f.shape_of(a), a, grid)
            iso += [key | f.shape_of(a) | r for r in _iso(f, a)]
    by_key = {(f.group.law, f.group.family, f.group.experts, f.group.granularity, f.group.arm): f for f in fits}
    for (law, family, e, g, arm), f in by_key.items():
        base = by_key.get((law, family, e, g, baseline))
        if arm == baseline or base is None or len(base.fit.boot) != len(f.fit.boot):
            continue
        for a in f.at_values():
            cm = compute_multiplier(base.fit, f.fit, grid, at=a)
            qualified = checks(cells[id(base)], cells[id(f)])
            mult += [f.key(study) | f.shape_of(a) | {"baseline": baseline} | r | qualified for r in cm.rows()]
    return Frames(
        frame(pts, POINTS_SCHEMA),
        frame(fit_rows, FIT_SCHEMA),
        frame(mult, MULTIPLIER_SCHEMA),
        frame(front, FRONTIER_SCHEMA),
        frame(iso, ISO_SCHEMA),
    )


def _frontier(f: Fitted, key: dict, at, grid: np.ndarray) -> list[dict]:
    """The compute-optimal frontier L*(C) with its interval, N_opt and D_opt."""
    law = f.fit.law
    value, lo, hi = f.fit.interval(lambda p: frontier_loss(law.reduce(p, at), grid))
    n_opt, d_opt = compute_optimal(f.fit.reduce(at), grid)
    top = f.fit.max_train_compute
    return [
        key
        | {
            "compute": float(c),
            "loss": _finite(value[i]),
            "loss_low": None if lo is None else _finite(lo[i]),
            "loss_high": None if hi is None else _finite(hi[i]),
            "n_opt": _finite(n_opt[i]),
            "d_opt": _finite(d_opt[i]),
            "extrapolated": bool(c > top),
        }
        for i, c in enumerate(grid)
    ]


def _iso(f: Fitted, at) -> list[dict]:
    """Iso-loss lines of the fitted law in (N, D): ISO_LEVELS losses evenly
    across the fitted losses of the points, each as the tokens D that reach
    it at ISO_POINTS values of N around the points (where D stays within
    1/8 .. 16x the runs' tokens)."""
    p, form = f.fit.points, f.fit.reduce(at)
    fitted = f.fit.predict(p)
    n = np.geomspace(p.n.min() / 2, p.n.max() * 4, ISO_POINTS)
    out = []
    for level in np.linspace(fitted.min(), fitted.max(), ISO_LEVELS):
        d = tokens_for_loss(form, level, n)
        keep = np.isfinite(d) & (d >= p.d.min() / 8) & (d <= p.d.max() * 16)
        out += [{"level": float(level), "n_params": float(a), "tokens": float(b)} for a, b in zip(n[keep], d[keep])]
    return out


def _finite(v) -> float | None:
    v = float(v)
    return v if np.isfinite(v) else None
