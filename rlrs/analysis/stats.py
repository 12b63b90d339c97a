"""The statistics: where a curve first reaches a level (the speedup's T*),
and the percentile bootstrap over seeds. Pure numpy/scipy, no frames.

Vectorized over a leading batch axis (the bootstrap's resamples): one call
computes T* for thousands of resampled curves.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from scipy.interpolate import PchipInterpolator
from scipy.stats import bootstrap

CONFIDENCE = 0.95
N_RESAMPLES = 2000
BOOTSTRAP_SEED = 0
_BISECTIONS = 64  # halvings of one interval: below float resolution


def first_reach(x: np.ndarray, y: np.ndarray, level, kind: str = "linear") -> np.ndarray | float:
    """The smallest x at which the curve y(x) comes down to `level`.

    y is one curve [k] or a batch [B, k] (level scalar or [B]). Between its
    points the curve is `linear`, or `pchip`: PCHIP is monotone on each
    interval, so the first interval whose right end is at or below `level`
    holds the first crossing, found there by bisection on the cubic piece.
    Returns -inf where the curve is already below `level` at its first point
    and +inf where it never gets there: the caller reports a bound rather
    than extrapolating.
    """
    x = np.asarray(x, float)
    y = np.asarray(y, float)
    single = y.ndim == 1
    y = np.atleast_2d(y)
    level = np.broadcast_to(np.asarray(level, float), y.shape[:1])
    below = y <= level[:, None]
    i = np.maximum(below.argmax(axis=1), 1)  # right end of the crossing interval
    rows = np.arange(len(y))
    y0, y1, x0, x1 = y[rows, i - 1], y[rows, i], x[i - 1], x[i]
    if kind == "linear":
        with np.errstate(divide="ignore", invalid="ignore"):
            out = x0 + (level - y0) * (x1 - x0) / (y1 - y0)
    else:
        coef = PchipInterpolator(x, y.T, axis=0).c[:, i - 1, rows]  # [4, B]: piece on [x0, x1]
        lo, hi = np.zeros(len(y)), x1 - x0
        for _ in range(_BISECTIONS):
            mid = (lo + hi) / 2
            above = ((coef[0] * mid + coef[1]) * mid + coef[2]) * mid + coef[3] > level
            lo, hi = np.where(above, mid, lo), np.where(above, hi, mid)
        out = x0 + hi
    out = np.where(y[:, 0] == level, x[0], out)
    out = np.where(~below.any(axis=1), np.inf, out)
    out = np.where(y[:, 0] < level, -np.inf, out)
    return float(out[0]) if single else out


def ladder_t_star(lengths: np.ndarray, losses: np.ndarray, level) -> np.ndarray | float:
    """T* with L(T*) = level, PCHIP through (log T, L); +-inf outside the ladder."""
    log_t = first_reach(np.log(np.asarray(lengths, float)), losses, level, kind="pchip")
    with np.errstate(over="ignore"):
        t = np.where(np.isfinite(log_t), np.exp(log_t), log_t)  # keep -inf as -inf, not exp(-inf) = 0
    return float(t) if np.ndim(log_t) == 0 else t


def target_t_star(steps: np.ndarray, curve: np.ndarray, level) -> np.ndarray | float:
    """Steps the eval curve needs to first reach `level`; +-inf outside it."""
    return first_reach(steps, curve, level, kind="linear")


# ---------------------------------------------------------------- estimate + CI
@dataclass
class Estimate:
    speedup: float | None
    t_star: float | None
    bound: str | None  # '> 1.00': at least the longest baseline's T/T - 1; '< -0.50': at most the shortest's
    ci_low: float | None
    ci_high: float | None
    notes: list[str] = field(default_factory=list)
    bound_value: float | None = None  # the edge in the bound, as a number

    def saved(self, value: float | None) -> float | None:
        # saved = 1 - T/T* = 1 - 1/(1 + speedup): monotone, so CI ends map to CI ends.
        return None if value is None else 1.0 - 1.0 / (1.0 + value)


def percentile_ci(samples: tuple, statistic: Callable) -> tuple[float, float]:
    """The study's one bootstrap: percentile interval at CONFIDENCE over
    independently resampled samples (vectorized `statistic`), fixed seed."""
    res = bootstrap(
        samples,
        statistic,
        n_resamples=N_RESAMPLES,
        method="percentile",
        confidence_level=CONFIDENCE,
        vectorized=True,
        paired=False,
        rng=np.random.default_rng(BOOTSTRAP_SEED),
    )
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def estimate_speedup(
    samples: list[np.ndarray],
    t_star_of_means: Callable[[list[np.ndarray]], np.ndarray],
    steps: int,
    edges: tuple[float, float],
) -> Estimate:
    """Point estimate, bound and percentile-bootstrap CI of T*/T - 1.

    `samples[0]` are the arm's per-seed observations; the rest are the
    baseline's (per length, or per-seed eval curves as rows). Given the
    per-sample means, each with a leading batch axis, `t_star_of_means`
    returns T* per batch entry. `edges` = (shortest, longest) T* the
    baseline can show. Samples with one observation are held fixed in the
    bootstrap; with a single arm seed there is no interval.
    """
    lo_edge, hi_edge = edges[0] / steps - 1.0, edges[1] / steps - 1.0
    means = [s.mean(axis=0) for s in samples]
    t = float(t_star_of_means([m[None] for m in means])[0])
    notes: list[str] = []
    if math.isfinite(t):
        est = Estimate(t / steps - 1.0, t, None, None, None, notes)
    elif t > 0:
        est = Estimate(None, None, f"> {hi_edge:.2f}", None, None, notes, hi_edge)
        notes.append("arm beats the longest baseline: no extrapolation")
    else:
        est = Estimate(None, None, f"< {lo_edge:.2f}", None, None, notes, lo_edge)
        notes.append("arm is worse than the shortest baseline: no extrapolation")

    if len(samples[0]) < 2:
        notes.append("one arm seed: no interval")
        return est
    varying = [i for i, s in enumerate(samples) if len(s) >= 2]
    if len(varying) < len(samples):
        notes.append("baseline groups with one seed held fixed in the bootstrap")

    def statistic(*idx: np.ndarray, axis: int = -1) -> np.ndarray:
        # idx: resampled seed indices per varying sample, [batch, n_i].
        batch = idx[0].shape[0]
        m = [np.broadcast_to(mean, (batch, *mean.shape)) for mean in means]
        for i, ix in zip(varying, idx):
            m[i] = samples[i][ix.astype(int)].mean(axis=1)
        v = t_star_of_means(m) / steps - 1.0
        # Outside the baseline's range: a finite stand-in just beyond the
        # edge keeps percentiles ordered; CI ends landing there become NULL.
        return np.where(v == np.inf, hi_edge + 1.0, np.where(v == -np.inf, lo_edge - 1.0, v))

    low, high = percentile_ci(tuple(np.arange(len(samples[i])) for i in varying), statistic)
    # An end outside [lo_edge, hi_edge] is a stand-in, not a number: NULL.
    if low < lo_edge or low > hi_edge:
        notes.append(
            f"lower CI end outside the baseline's range ({'<' if low < lo_edge else '>'} "
            f"{lo_edge if low < lo_edge else hi_edge:.2f})"
        )
        low = None
    if high > hi_edge or high < lo_edge:
        notes.append(
            f"upper CI end outside the baseline's range ({'>' if high > hi_edge else '<'} "
            f"{hi_edge if high > hi_edge else lo_edge:.2f})"
        )
        high = None
    est.ci_low, est.ci_high = low, high
    return est
