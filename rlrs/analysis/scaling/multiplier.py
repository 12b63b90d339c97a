"""The compute multiplier of an arm's fit over the baseline's (spec section
3): at baseline compute C, C / C_arm, where C_arm is the arm's compute to
reach the baseline's loss L_b(C), both along their compute-optimal frontiers
(or both at one fixed N); 0 when the arm never reaches that loss. Its
interval pairs bootstrap replicate b of each fit; a budget beyond either
fit's training compute is marked `extrapolated`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rlrs.analysis.scaling.fit import Fit, percentile_interval
from rlrs.analysis.scaling.frontier import multiplier_of
from rlrs.errors import ConfigError


@dataclass
class ComputeMultiplier:
    """The arm's compute multiplier over the baseline at baseline budgets."""

    law: str
    arm: str
    baseline: str
    n_kind: str
    at: float | None
    fixed_n: float | None
    compute: np.ndarray
    multiplier: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    extrapolated: np.ndarray

    def rows(self) -> list[dict]:
        """`compute_multiplier` rows (NULL interval where undefined)."""
        f = lambda v: None if not np.isfinite(v) else float(v)  # noqa: E731
        return [
            {
                "law": self.law,
                "arm": self.arm,
                "n_kind": self.n_kind,
                "compute": float(c),
                "multiplier": f(m),
                "ci_low": f(lo),
                "ci_high": f(hi),
                "extrapolated": bool(x),
            }
            for c, m, lo, hi, x in zip(self.compute, self.multiplier, self.ci_low, self.ci_high, self.extrapolated)
        ]


def compute_multiplier(
    base: Fit, arm: Fit, budgets, at: float | None = None, fixed_n: float | None = None
) -> ComputeMultiplier:
    """The arm's compute multiplier over `base` at each baseline budget, with
    the percentile interval over the two fits' bootstrap replicates (replicate
    b of each, each refit on its own resample). `extrapolated`: the budget is
    beyond the largest training compute of either fit; at a fixed N also
    where N or the tokens C/(6N) leave either fit's training range. With the
    same seed and the same point order the two fits resample the same grid
    cells (a paired bootstrap); different seeds resample independently."""
    if base.law.name != arm.law.name or base.n_kind != arm.n_kind:
        raise ConfigError(
            "arm",
            f"compare one law and one parameter count: {base.law.name}/{base.n_kind} vs {arm.law.name}/{arm.n_kind}",
        )
    if len(base.boot) != len(arm.boot):
        raise ConfigError("n_bootstrap", f"both fits need as many replicates ({len(base.boot)} vs {len(arm.boot)})")
    budgets = np.atleast_1d(np.asarray(budgets, dtype=float))
    law = base.law
    value = multiplier_of(law.reduce(base.params, at), law.reduce(arm.params, at), budgets, fixed_n)
    lo = hi = np.full(len(budgets), np.nan)
    if len(base.boot):
        col = lambda f: {k: v[:, None] for k, v in f.boot_params().items()}  # noqa: E731
        reps = multiplier_of(law.reduce(col(base), at), law.reduce(col(arm), at), budgets[None, :], fixed_n)
        lo, hi = percentile_interval(reps, base.confidence)
    extrapolated = budgets > min(base.max_train_compute, arm.max_train_compute)
    if fixed_n is not None:
        for name, v in (("n", np.full(len(budgets), float(fixed_n))), ("d", budgets / (6.0 * fixed_n))):
            lo_, hi_ = zip(base.train_range(name), arm.train_range(name))
            extrapolated |= (v < max(lo_)) | (v > min(hi_))
    return ComputeMultiplier(
        law.name,
        arm.arm,
        base.arm,
        base.n_kind,
        at,
        fixed_n,
        budgets,
        value,
        np.asarray(lo, dtype=float),
        np.asarray(hi, dtype=float),
        extrapolated,
    )
