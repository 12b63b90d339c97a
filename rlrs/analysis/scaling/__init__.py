"""Scaling laws over a study: fit L(N, D[, E or G]) per arm, and what the
fits give (shared/spec/scaling-laws.md).

    laws      the laws as data (Chinchilla, fine-grained, joint MoE), Points
    frontier  compute-optimal allocation, frontier, iso-loss grid, multiplier of two forms
    fit       log-space summed-Huber L-BFGS-B fits from a grid, hold-out, bootstrap, Fit
    multiplier  the compute multiplier of an arm's fit over the baseline's, with its interval
    study     a study's runs -> points per (law, arm, family) -> the frames of
              scaling_points, scaling_fit, compute_multiplier, scaling_curves
    columns   the documentation of every column of those views

Pure numerics below `study` (numpy + scipy): arrays in, dataclasses out, each
with `rows()` shaped like the DuckDB tables (every row also says which
parameter count N is, `n_kind`).
"""

from rlrs.analysis.scaling.fit import (
    BOOT_STARTS,
    CONFIDENCE,
    HUBER_DELTA,
    N_BOOTSTRAP,
    Fit,
    fit_law,
    holdout_mask,
    huber_objective,
    objective,
    percentile_interval,
)
from rlrs.analysis.scaling.frontier import (
    IsoLoss,
    compute_optimal,
    compute_optimal_numeric,
    compute_to_reach,
    frontier_loss,
    iso_loss,
    multiplier_of,
    optimal_exponents,
)
from rlrs.analysis.scaling.laws import (
    CHINCHILLA,
    FINE_GRAINED,
    JOINT_MOE,
    LAWS,
    PUBLISHED,
    ChinchillaForm,
    Law,
    Param,
    Points,
    get_law,
    joint_moe_law,
    transformed_experts,
)
from rlrs.analysis.scaling.multiplier import ComputeMultiplier, compute_multiplier

__all__ = [
    "BOOT_STARTS",
    "CHINCHILLA",
    "CONFIDENCE",
    "FINE_GRAINED",
    "HUBER_DELTA",
    "JOINT_MOE",
    "LAWS",
    "N_BOOTSTRAP",
    "PUBLISHED",
    "ChinchillaForm",
    "ComputeMultiplier",
    "Fit",
    "IsoLoss",
    "Law",
    "Param",
    "Points",
    "compute_multiplier",
    "compute_optimal",
    "compute_optimal_numeric",
    "compute_to_reach",
    "fit_law",
    "frontier_loss",
    "get_law",
    "holdout_mask",
    "huber_objective",
    "iso_loss",
    "joint_moe_law",
    "multiplier_of",
    "objective",
    "optimal_exponents",
    "percentile_interval",
    "transformed_experts",
]
