"""Health check 5: have the runs left their early plateau in the first
quarter of training, and are they not still dropping steeply at the end?

Three criteria, each applied where the eval points allow it; a run is
flagged when any applicable one flags it (rows: rlrs.analysis.health).

1. The spec's test, where a run has an eval point at or before 5% of its
   training and one at 20-30%: the loss at the point nearest 25% must be
   below the loss at the last point by 5% (the plateau level reached by
   then) by at least `plateau_min_drop` nats.
2. Never left, where a size's compared runs have eval points at 5-10% of
   their training: that size's plateau level P is the median, over its
   compared runs (every arm, every seed) that have such points, of each
   run's mean eval loss over them. A run whose final loss is not at least
   `plateau_margin` nats below P never left its plateau (criterion 1 alone
   passes such a run when its loss at 25% is a hair below its loss at 5%;
   so does the shape test, since a plateau that is never left declines
   convexly). P is per size, as the spec's test reads each run's own
   level: sizes differ in their plateau (a larger model's is lower) and in
   their length (5-10% of training falls at other steps), so one
   study-wide level would pass a small size that never left a high
   plateau and flag one that left it; the arms and seeds of one size share
   their model and length, and pooling them keeps one run's early exit
   from setting its own bar.
3. The shape test, the fallback where criterion 1 has no eval points
   (e.g. study-cpu v1: evaluations every 25% of training): a curve past its
   plateau is convex in log steps, so over the doublings 12.5->25->50->100%
   a later drop larger than `plateau_drop_ratio` x the one before it (and
   >= `plateau_min_drop` nats) says the run was still on its plateau
   after 25%.

end_slope: (L(90%) - L(100%)) / L(100%) above `end_drop` warns. A schedule
that anneals in its last 10% (WSD) drops there by design: raise end_drop.

Both rows warn, never fail: a speedup that comes from leaving the plateau
sooner is real at that scale, only not evidence for others.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import polars as pl

from rlrs.analysis.health import PASS, WARN, row

EARLY, QUARTER, PLATEAU_WINDOW = 0.05, (0.20, 0.30), (0.05, 0.10)


def loss_at(steps_trained: np.ndarray, losses: np.ndarray, t: float) -> float | None:
    """The curve at t steps trained, linear between points, None outside."""
    if len(steps_trained) == 0 or t < steps_trained[0] or t > steps_trained[-1]:
        return None
    return float(np.interp(t, steps_trained, losses))


def spec_test(x: np.ndarray, y: np.ndarray, steps: int) -> tuple[float, float] | None:
    """(loss at the last point by 5%, loss at the point nearest 25% within
    20-30%) of one curve, or None without such points."""
    early = np.flatnonzero(x <= EARLY * steps)
    quarter = np.flatnonzero((x >= QUARTER[0] * steps) & (x <= QUARTER[1] * steps))
    if not len(early) or not len(quarter):
        return None
    q = quarter[np.argmin(np.abs(x[quarter] - 0.25 * steps))]
    return float(y[early[-1]]), float(y[q])


def plateau_reading(x: np.ndarray, y: np.ndarray, steps: int) -> float | None:
    """One run's mean eval loss over its points at 5-10% of training."""
    inside = (x >= PLATEAU_WINDOW[0] * steps) & (x <= PLATEAU_WINDOW[1] * steps)
    return float(y[inside].mean()) if inside.any() else None


def shape_test(x: np.ndarray, y: np.ndarray, steps: int, s: Mapping[str, float]) -> tuple[bool, tuple] | None:
    """(still on the plateau, the worst (earlier, later) drop pair) by the
    doubling test, or None when the curve covers no two doublings."""
    level = [loss_at(x, y, f * steps) for f in (0.125, 0.25, 0.5, 1.0)]
    drops = [None if a is None or b is None else a - b for a, b in zip(level, level[1:])]
    pairs = [(d0, d1) for d0, d1 in zip(drops, drops[1:]) if d0 is not None and d1 is not None]
    if not pairs:
        return None
    bad = [(d0, d1) for d0, d1 in pairs if d1 > s["plateau_drop_ratio"] * max(d0, 0.0) and d1 >= s["plateau_min_drop"]]
    return bool(bad), max(bad or pairs, key=lambda p: p[1] - p[0])


def plateau(runs: pl.DataFrame, curves: pl.DataFrame, s: Mapping[str, float]) -> list[dict]:
    """Check 5 per compared cell (frames: rlrs.analysis.health's RUNS and
    CURVES contracts): rows plateau_exit (value: the fraction of the cell's
    judged runs flagged) and end_slope."""
    rows = []
    main = runs.filter((pl.col("sweep") == "main") & pl.col("final_eval_loss").is_not_null())
    by_run = {
        rid: (g["step"].to_numpy() + 1.0, g["eval_loss"].to_numpy())
        for (rid,), g in curves.drop_nulls("eval_loss").sort("step").group_by(["run_id"], maintain_order=True)
    }
    empty = (np.array([]), np.array([]))
    readings: dict[str, list[float]] = {}
    for rid, size, steps in main.select("run_id", "size", "steps").iter_rows():
        reading = plateau_reading(*by_run.get(rid, empty), steps)
        if reading is not None:
            readings.setdefault(size, []).append(reading)
    levels = {size: float(np.median(r)) for size, r in readings.items()}
    for (family, size, arm), cell in main.group_by(["family", "size", "arm"], maintain_order=True):
        at = {"family": family, "size": size, "arm": arm}
        level = levels.get(size)
        flagged, judged, why, ends = 0, 0, {}, []
        for rid, steps, final in cell.select("run_id", "steps", "final_eval_loss").iter_rows():
            x, y = by_run.get(rid, empty)
            reasons, applied = [], False
            spec = spec_test(x, y, steps)
            if spec is not None:
                applied = True
                if spec[1] > spec[0] - s["plateau_min_drop"]:
                    reasons.append(f"loss at 25% {spec[1]:.3f} not below its 5% level {spec[0]:.3f}")
            else:
                shape = shape_test(x, y, steps, s)
                if shape is not None:
                    applied = True
                    if shape[0]:
                        reasons.append(
                            f"drops faster after 25% than before (per doubling of steps "
                            f"{shape[1][0]:.3f} -> {shape[1][1]:.3f} nats)"
                        )
            if level is not None:
                applied = True
                if final > level - s["plateau_margin"]:
                    reasons.append(
                        f"final loss {final:.3f} not {s['plateau_margin']:g} nats below its size's "
                        f"plateau level {level:.3f}: never left it"
                    )
            judged += applied
            flagged += bool(reasons)
            for r in reasons:
                why.setdefault(r.split(" (")[0] if "drops faster" in r else r, r)
            l90, l100 = loss_at(x, y, 0.9 * steps), loss_at(x, y, steps)
            if l90 is not None and l100 is not None:
                ends.append((l90 - l100) / l100)
        if not judged:
            rows.append(
                row(
                    "plateau_exit",
                    WARN,
                    f"eval curves too sparse to tell (need eval points at <= 5% and "
                    f"20-30% of training, or two doublings of steps among 12.5/25/50/100%; {cell.height} "
                    "run(s))",
                    **at,
                )
            )
        elif flagged:
            rows.append(
                row(
                    "plateau_exit",
                    WARN,
                    f"{flagged} of {judged} run(s) still on the early plateau after 25% "
                    f"of training ({'; '.join(why.values())}); the final loss times its exit",
                    value=flagged / judged,
                    threshold=0.0,
                    **at,
                )
            )
        else:
            rows.append(
                row(
                    "plateau_exit",
                    PASS,
                    f"all {judged} run(s) past their early plateau by 25% of training",
                    value=0.0,
                    threshold=0.0,
                    **at,
                )
            )
        if not ends:
            rows.append(row("end_slope", WARN, "no eval points covering the last 10% of training", **at))
        else:
            steep = max(ends)
            status = WARN if steep > s["end_drop"] else PASS
            rows.append(
                row(
                    "end_slope",
                    status,
                    f"eval loss falls by {100 * steep:.1f}% over the last 10% of "
                    f"training (worst of {len(ends)} run(s)){': still dropping steeply' if status == WARN else ''}",
                    value=steep,
                    threshold=s["end_drop"],
                    **at,
                )
            )
    return rows
