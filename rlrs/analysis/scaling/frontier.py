"""What a fitted law gives at a fixed E or G, where every law is
Chinchilla-form, L = c + m N^mu + n D^nu (mu, nu < 0): the compute-optimal
allocation in closed form (spec section 1, magnitudes a' = -mu, b' = -nu),
the frontier L*(C) = c + K C^-kappa with kappa = a'b'/(a'+b'), the compute
to reach a loss, the iso-loss grid and the compute multiplier of one form
over another. `compute_optimal_numeric` minimises any law over N at fixed C
as a cross-check.

Compute is C = 6 N D with N the caller's count (exact for the Joint MoE law's
N_act; an approximation for a non-embedding count).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize_scalar

from rlrs.analysis.scaling.laws import ChinchillaForm, Law, Points, get_law, need_at


def optimal_exponents(form: ChinchillaForm):
    """(exponent of N_opt in C, of D_opt in C) = (b'/(a'+b'), a'/(a'+b'))."""
    a, b = -form.mu, -form.nu
    return b / (a + b), a / (a + b)


def _frontier_ok(form):
    return (-form.mu > 0) & (-form.nu > 0) & (form.m > 0) & (form.n > 0)


def compute_optimal(form: ChinchillaForm, compute) -> tuple[np.ndarray, np.ndarray]:
    """Closed-form (N_opt, D_opt) for budget C = 6 N D (spec section 1, with
    magnitudes a' = -mu, b' = -nu); NaN where the form has no interior optimum."""
    a, b = -form.mu, -form.nu
    ok = _frontier_ok(form)
    with np.errstate(all="ignore"):
        g = np.power(a * form.m / (b * form.n), 1.0 / (a + b))
        n_opt = np.where(ok, g * np.power(np.asarray(compute) / 6.0, b / (a + b)), np.nan)
    return n_opt, np.asarray(compute) / (6.0 * n_opt)


def _frontier_k(form):
    """L*(C) = c + K C^-kappa along the compute-optimal frontier."""
    a, b = -form.mu, -form.nu
    kappa = a * b / (a + b)
    with np.errstate(all="ignore"):
        g = np.power(a * form.m / (b * form.n), 1.0 / (a + b))
        k = form.m * (1.0 + a / b) * np.power(g, -a) * np.power(6.0, kappa)
    return np.where(_frontier_ok(form), k, np.nan), kappa


def frontier_loss(form: ChinchillaForm, compute) -> np.ndarray:
    """The loss at the compute-optimal allocation of budget C."""
    k, kappa = _frontier_k(form)
    return form.c + k * np.power(np.asarray(compute, dtype=float), -kappa)


def compute_to_reach(form: ChinchillaForm, loss) -> np.ndarray:
    """Compute along the frontier to reach `loss`; inf where loss <= c."""
    k, kappa = _frontier_k(form)
    with np.errstate(all="ignore"):
        gap = np.asarray(loss, dtype=float) - form.c
        return np.where(gap > 0, np.power(gap / k, -1.0 / kappa), np.inf)


def compute_optimal_numeric(
    law: Law | str, params: dict, compute: float, at: float | None = None
) -> tuple[float, float]:
    """(N_opt, D_opt) by minimising the law over log N at fixed C = 6 N D
    (scipy's bounded Brent), for any law; `at` is E or G where needed."""
    law = get_law(law) if isinstance(law, str) else law
    third = {} if law.needs is None else {law.needs: np.array([float(at)])}
    if law.needs is not None:
        need_at(law.name, at, law.needs.upper())

    def loss(log_n):
        n = np.exp(log_n)
        return float(
            law.predict(params, Points(np.array([n]), np.array([compute / (6.0 * n)]), np.ones(1), **third))[0]
        )

    top = np.log(compute / 6.0)
    res = minimize_scalar(loss, bounds=(0.0, top), method="bounded", options={"xatol": 1e-10})
    n = float(np.exp(res.x))
    return n, compute / (6.0 * n)


@dataclass(frozen=True)
class IsoLoss:
    """L on the grid n x d (loss[i, j] at n[i], d[j]) and the compute 6 n d."""

    law: str
    n: np.ndarray
    d: np.ndarray
    loss: np.ndarray

    @property
    def compute(self) -> np.ndarray:
        return 6.0 * self.n[:, None] * self.d[None, :]

    def rows(self) -> list[dict]:
        return [
            {"law": self.law, "n_params": float(n), "tokens": float(d), "loss": float(self.loss[i, j])}
            for i, n in enumerate(self.n)
            for j, d in enumerate(self.d)
        ]


def iso_loss(
    fit_or_law,
    params: dict | None = None,
    n_range=(1e6, 1e10),
    d_range=(1e8, 1e12),
    num: int = 50,
    at: float | None = None,
) -> IsoLoss:
    """The data of iso-loss contours: the law's L over a log-spaced (N, D) grid."""
    fitted = hasattr(fit_or_law, "law") and hasattr(fit_or_law, "params")  # a Fit (rlrs.analysis.scaling.fit)
    law = fit_or_law.law if fitted else (get_law(fit_or_law) if isinstance(fit_or_law, str) else fit_or_law)
    params = fit_or_law.params if fitted else params
    n, d = np.geomspace(*n_range, num), np.geomspace(*d_range, num)
    nn, dd = np.meshgrid(n, d, indexing="ij")
    third = {} if law.needs is None else {law.needs: np.full(nn.size, float(at if at is not None else np.nan))}
    if law.needs is not None:
        need_at(law.name, at, law.needs.upper())
    pts = Points(nn.ravel(), dd.ravel(), np.ones(nn.size), **third)
    return IsoLoss(law.name, n, d, law.predict(params, pts).reshape(num, num))


# ---------------------------------------------------------------- compute multiplier


def multiplier_of(base: ChinchillaForm, arm: ChinchillaForm, compute, fixed_n: float | None = None) -> np.ndarray:
    """C / C_arm: C_arm is the arm's compute to reach the baseline's loss at
    compute C, along each one's compute-optimal frontier, or with both at one
    model size `fixed_n` (then C = 6 N D and the ratio is one of tokens).
    0 where the arm never reaches that loss."""
    compute = np.asarray(compute, dtype=float)
    if fixed_n is None:
        return compute / compute_to_reach(arm, frontier_loss(base, compute))
    d = compute / (6.0 * fixed_n)
    target = base.c + base.m * fixed_n**base.mu + base.n * np.power(d, base.nu)
    gap = target - arm.c - arm.m * fixed_n**arm.mu
    with np.errstate(all="ignore"):
        d_arm = np.where(gap > 0, np.power(gap / arm.n, 1.0 / arm.nu), np.inf)
    return d / d_arm


def tokens_for_loss(form: ChinchillaForm, loss, n) -> np.ndarray:
    """The iso-loss line L(N, D) = loss at a fixed E or G: the tokens D that
    reach `loss` at each N; NaN where N alone cannot get below it."""
    n = np.asarray(n, dtype=float)
    with np.errstate(all="ignore"):
        gap = np.asarray(loss, dtype=float) - form.c - form.m * np.power(n, form.mu)
        return np.where(gap > 0, np.power(gap / form.n, 1.0 / form.nu), np.nan)
