"""Where a curve first reaches a level: the speedup's T* (ladder and
target definitions). Pure numpy/scipy, no frames; the estimates and their
intervals are rlrs.analysis.estimates.

Vectorized over a leading batch axis (the bootstrap's resamples): one call
computes T* for thousands of resampled curves.
"""

from __future__ import annotations

import numpy as np
from scipy.interpolate import PchipInterpolator

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
