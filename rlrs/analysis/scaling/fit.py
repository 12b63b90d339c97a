"""Fitting a law to one arm's points: the objective, the fit from a grid of
starts, the hold-out and the bootstrap (shared/spec/scaling-laws.md
section 2).

The fit minimises the SUMMED Huber loss (delta a setting, default 1e-3) of
the log residuals log Lhat - log L with L-BFGS-B and the analytic gradient,
from every point of the law's starting grid (or only the `n_starts` grid
points with the lowest starting objective, a vectorised pre-screen), and
keeps the lowest objective. Held-out points (an extrapolation set: the k
largest-compute points, or a mask) are not fitted; train and held-out RMSE
of log L are reported. Among starts the fit keeps the lowest train objective
by default; `select="rmse"` keeps the lowest train + held-out RMSE as the
Joint MoE paper does (that uses the held-out points for selection, so their
RMSE is then no longer an independent check).

Uncertainty: bootstrap over the training points (resampled with replacement,
as integer weights; held-out points stay out), each replicate refit from the
best fit plus the `boot_starts` best pre-screened grid points; percentile
intervals of every coefficient and of every derived quantity (`Fit.interval`).
Seeded: identical inputs give identical numbers. The coefficients reported are
the fit to the training points; pass `holdout=None` to fit every point.
`holdout=k` breaks ties in compute by point order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize
from scipy.special import huber
from threadpoolctl import threadpool_limits

from rlrs.analysis.scaling.frontier import compute_optimal, frontier_loss, optimal_exponents
from rlrs.analysis.scaling.laws import ChinchillaForm, Law, Points, get_law, log_sum_exp
from rlrs.errors import ConfigError

HUBER_DELTA = 1e-3
CONFIDENCE = 0.95
N_BOOTSTRAP = 200
# Grid starts per bootstrap refit besides the best fit's parameters: measured
# on synthetic fine-grained and Chinchilla points (30 resamples each), a grid
# start beat the warm start in 2 of 30 and 0 of 30 resamples, by at most
# 7e-7 of the objective, at 2-4x the cost. One stays as a guard.
BOOT_STARTS = 1
# L-BFGS-B: the summed objective is small in absolute terms (~delta * sum|r|),
# and scipy's ftol is relative to max(|f|, 1): stop on the gradient instead.
_LBFGS = {"maxiter": 5000, "ftol": 1e-15, "gtol": 1e-12, "maxcor": 20}


def huber_objective(residuals, delta: float = HUBER_DELTA, weights=None) -> float:
    """SUM over points (weighted by resample counts) of the Huber loss of the
    log residuals: r^2/2 where |r| <= delta, delta (|r| - delta/2) beyond."""
    h = huber(delta, np.asarray(residuals, dtype=float))
    return float(h.sum() if weights is None else h @ weights)


def _objective(theta, feats, target, delta, weights):
    """Summed Huber loss and its gradient: d log Lhat / d theta is the softmax
    over terms of the (linear) term features. `feats` is (points * terms,
    params), the terms of each point adjacent."""
    lse, soft = log_sum_exp((feats @ theta).reshape(len(target), -1))
    r = lse - target
    psi = np.clip(r, -delta, delta) * weights
    grad = (psi[:, None] * soft).reshape(-1) @ feats
    return huber_objective(r, delta, weights), grad


def _batch_objective(thetas, feats, target, delta, weights):
    """Objective of many starting points at once (the grid pre-screen)."""
    out = np.empty(len(thetas))
    for s in range(0, len(thetas), 2048):
        t = np.einsum("mtp,kp->kmt", feats, thetas[s : s + 2048])
        out[s : s + 2048] = huber(delta, log_sum_exp(t)[0] - target) @ weights
    return out


def _minimise(start, feats, target, delta, weights, bounds):
    res = minimize(
        _objective,
        start,
        args=(feats, target, delta, weights),
        jac=True,
        method="L-BFGS-B",
        bounds=bounds,
        options=_LBFGS,
    )
    return res.x, float(res.fun)


def _rmse(r) -> float | None:
    return float(np.sqrt(np.mean(r * r))) if len(r) else None


# ---------------------------------------------------------------- fitting


@dataclass
class Fit:
    """One law fitted to one arm's points.

    `params`: the coefficients (natural scale); `boot`: one row per bootstrap
    replicate, columns as `law.names` (natural scale); `held_out`: mask over
    `points`; `n_points`: points fitted (the training points)."""

    law: Law
    arm: str
    n_kind: str
    points: Points
    held_out: np.ndarray
    params: dict
    objective: float
    rmse_train: float
    rmse_heldout: float | None
    max_abs_heldout: float | None
    delta: float
    confidence: float
    boot: np.ndarray
    n_starts: int
    seed: int

    @property
    def n_points(self) -> int:
        return int((~self.held_out).sum())

    @property
    def max_train_compute(self) -> float:
        return float(self.points.compute[~self.held_out].max())

    def train_range(self, name: str) -> tuple[float, float]:
        """(min, max) of points.<name> ("n", "d", ...) over the training points."""
        v = getattr(self.points, name)[~self.held_out]
        return float(v.min()), float(v.max())

    def boot_params(self) -> dict:
        return {name: self.boot[:, j] for j, name in enumerate(self.law.names)}

    def interval(
        self, quantity: Callable[[dict], np.ndarray]
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """(value, ci_low, ci_high) of `quantity(params)`, a function of the
        coefficients that broadcasts over arrays of them: the point estimate
        and the percentile interval over the bootstrap replicates. No interval
        (None) without replicates; replicates that leave the quantity
        undefined (non-finite) count as beyond both ends (dropping them
        would flatter it), and a bound they decide is None or NaN
        (percentile_interval)."""
        value = np.asarray(quantity(self.params), dtype=float)
        if not len(self.boot):
            return value, None, None
        reps = np.asarray(quantity({k: v[:, None] for k, v in self.boot_params().items()}), dtype=float)
        reps = reps.reshape(len(self.boot), *value.shape) if value.ndim else reps.reshape(len(self.boot))
        return (value, *percentile_interval(reps, self.confidence))

    def predict(self, points: Points) -> np.ndarray:
        return self.law.predict(self.params, points)

    def reduce(self, at: float | None = None) -> ChinchillaForm:
        return self.law.reduce(self.params, at)

    def rows(self, budgets: Sequence[float] = (), at: Sequence[float] | None = None) -> list[dict]:
        """`scaling_fit` rows: every coefficient, the fixed settings (no
        interval: not fitted), and derived quantities per fixed E or G in `at`
        (default: the values among the points): the Chinchilla-form m, mu, n,
        nu, the exponents of N_opt and D_opt in C, and at each budget the
        compute-optimal N_opt, D_opt and loss, named like 'N_opt@C=1e+20,E=8'."""
        base = {
            "law": self.law.name,
            "arm": self.arm,
            "n_kind": self.n_kind,
            "rmse_train": self.rmse_train,
            "rmse_heldout": self.rmse_heldout,
            "n_points": self.n_points,
        }
        out = []
        for name in self.law.names:
            out.append(base | _ci_row(name, *self.interval(lambda p, name=name: p[name])))
        for name, value in self.law.fixed.items():
            out.append(base | _ci_row(name, value, None, None))
        for a in self._at_values(at):
            where = [] if a is None else [f"{self.law.needs.upper()}={a:g}"]
            for (name, c), q in _derived(self.law, a, budgets).items():
                tags = ([] if c is None else [f"C={c:.3g}"]) + where
                out.append(base | _ci_row(name + ("@" + ",".join(tags) if tags else ""), *self.interval(q)))
        return out

    def _at_values(self, at):
        if self.law.needs is None:
            return [None]
        if at is not None:
            return list(at)
        return sorted(set(getattr(self.points, self.law.needs).tolist()))

    def point_rows(self) -> list[dict]:
        """`scaling_points` rows: the points this fit saw, held-out ones marked."""
        p = self.points
        return [
            {
                "law": self.law.name,
                "arm": self.arm,
                "n_kind": self.n_kind,
                "run_id": None if p.run_id is None else p.run_id[i],
                "n_params": float(p.n[i]),
                "tokens": float(p.d[i]),
                "experts": None if p.e is None else float(p.e[i]),
                "granularity": None if p.g is None else float(p.g[i]),
                "tokens_per_param": float(p.d[i] / p.n[i]),
                "loss": float(p.loss[i]),
                "held_out": bool(self.held_out[i]),
            }
            for i in range(len(p))
        ]


def _ci_row(name, value, lo, hi):
    f = lambda v: None if v is None else float(v)  # noqa: E731
    return {"parameter": name, "value": f(value), "ci_low": f(lo), "ci_high": f(hi)}


def _derived(law: Law, at, budgets) -> dict[tuple[str, float | None], Callable]:
    """Derived quantities at one fixed E or G, keyed by (name, budget)."""
    form = lambda p: law.reduce(p, at)  # noqa: E731
    out = {
        ("m", None): lambda p: form(p).m,
        ("mu", None): lambda p: form(p).mu,
        ("n", None): lambda p: form(p).n,
        ("nu", None): lambda p: form(p).nu,
        ("N_opt_exponent", None): lambda p: optimal_exponents(form(p))[0],
        ("D_opt_exponent", None): lambda p: optimal_exponents(form(p))[1],
    }
    for c in budgets:
        out[("N_opt", c)] = lambda p, c=c: compute_optimal(form(p), c)[0]
        out[("D_opt", c)] = lambda p, c=c: compute_optimal(form(p), c)[1]
        out[("L_opt", c)] = lambda p, c=c: frontier_loss(form(p), c)
    return out


def percentile_interval(reps: np.ndarray, confidence: float = CONFIDENCE):
    """Percentile interval over the leading (replicate) axis, conservative
    about replicates that leave the quantity undefined (non-finite: a refit
    with no frontier, say): each counts as beyond both ends, below the low
    percentile and above the high one, so the interval is never narrower
    than any placement of them would make it. A bound that lands on one
    (more than the tail's share, (1 - confidence) / 2, undefined) is
    undefined: None for a scalar, NaN in an array. Without undefined
    replicates it is the plain percentile interval."""
    reps = np.asarray(reps, dtype=float)
    tail = 50.0 * (1.0 - confidence)
    bad = ~np.isfinite(reps)
    with np.errstate(invalid="ignore"):
        lo = np.percentile(np.where(bad, -np.inf, reps), tail, axis=0)
        hi = np.percentile(np.where(bad, np.inf, reps), 100.0 - tail, axis=0)
    lo, hi = np.where(np.isfinite(lo), lo, np.nan), np.where(np.isfinite(hi), hi, np.nan)
    if np.ndim(lo) == 0:
        return tuple(None if np.isnan(v) else float(v) for v in (lo, hi))
    return lo, hi


def holdout_mask(points: Points, holdout) -> np.ndarray:
    """The extrapolation set: None/0 -> none; an int k -> the k points with
    the largest compute 6 N D; a boolean array -> itself."""
    m = len(points)
    if holdout is None:
        return np.zeros(m, dtype=bool)
    if isinstance(holdout, (int, np.integer)) and not isinstance(holdout, bool):
        if not 0 <= holdout < m:
            raise ConfigError("holdout", f"need 0 <= k < {m} (the number of points), got {holdout}")
        mask = np.zeros(m, dtype=bool)
        mask[np.argsort(points.compute, kind="stable")[m - holdout :]] = True
        return mask
    mask = np.asarray(holdout)
    if mask.dtype != bool or mask.shape != (m,):
        raise ConfigError("holdout", f"must be an int (k largest-compute points) or a boolean mask of {m} points")
    if mask.all():
        raise ConfigError("holdout", "holds out every point; nothing left to fit")
    return mask.copy()


def fit_law(
    law: Law | str,
    points: Points,
    *,
    arm: str = "baseline",
    n_kind: str = "total",
    holdout=None,
    delta: float = HUBER_DELTA,
    n_starts: int | None = None,
    select: str = "objective",
    n_bootstrap: int = N_BOOTSTRAP,
    boot_starts: int = BOOT_STARTS,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> Fit:
    """Fit `law` to `points` (module docstring: objective, starts, hold-out,
    bootstrap). `n_starts=None` optimises from every grid point; an int k from
    the k grid points with the lowest starting objective. `select`:
    "objective" (lowest train objective) or "rmse" (lowest train + held-out
    RMSE, as the Joint MoE paper). `n_bootstrap=0`: no intervals."""
    with threadpool_limits(1, user_api="blas"):
        # The optimiser's vectors are tiny: multi-threaded BLAS made each
        # L-BFGS-B run 10-40x slower on a loaded 2-core machine.
        return _fit(
            get_law(law) if isinstance(law, str) else law,
            points,
            arm,
            n_kind,
            holdout,
            delta,
            n_starts,
            select,
            n_bootstrap,
            boot_starts,
            confidence,
            seed,
        )


def _fit(law, points, arm, n_kind, holdout, delta, n_starts, select, n_bootstrap, boot_starts, confidence, seed):
    if not delta > 0:
        raise ConfigError("delta", f"Huber delta must be > 0, got {delta}")
    if select not in ("objective", "rmse"):
        raise ConfigError("select", f"{select!r} is not allowed; allowed: objective, rmse")
    if not 0 < confidence < 1:
        raise ConfigError("confidence", f"must be in (0, 1), got {confidence}")
    for name, v, low in (("n_starts", n_starts, 1), ("n_bootstrap", n_bootstrap, 0), ("boot_starts", boot_starts, 0)):
        if v is not None and not (isinstance(v, (int, np.integer)) and v >= low):
            raise ConfigError(name, f"must be an integer >= {low}, got {v!r}")
    feats, target = law.features(points), np.log(points.loss)
    held = holdout_mask(points, holdout)
    train = ~held
    if train.sum() < len(law.params):
        raise ConfigError(
            "points", f"{train.sum()} training points cannot fit {len(law.params)} parameters of {law.name!r}"
        )
    ft, yt, ones = feats[train], target[train], np.ones(int(train.sum()))
    flat = lambda f: f.reshape(-1, f.shape[2])  # noqa: E731
    bounds = [p.bounds for p in law.params]

    grid = law.grid()
    order = np.argsort(_batch_objective(grid, ft, yt, delta, ones), kind="stable")
    starts = grid if n_starts is None else grid[order[:n_starts]]
    best = None
    for start in starts:
        theta, obj = _minimise(start, flat(ft), yt, delta, ones, bounds)
        r = log_sum_exp(feats @ theta)[0] - target
        key = obj if select == "objective" else (_rmse(r[train]) + (_rmse(r[held]) or 0.0))
        if best is None or key < best[0]:
            best = (key, theta, obj, r)
    _, theta, obj, resid = best

    rng = np.random.default_rng(seed)
    boot_grid = grid[order[:boot_starts]]
    m = len(yt)
    boot = np.empty((n_bootstrap, len(law.params)))
    for b in range(n_bootstrap):
        counts = np.bincount(rng.integers(0, m, m), minlength=m).astype(float)
        used = counts > 0
        f_b, y_b, w_b = flat(ft[used]), yt[used], counts[used]
        cand = [_minimise(s, f_b, y_b, delta, w_b, bounds) for s in (theta, *boot_grid)]
        boot[b] = min(cand, key=lambda c: c[1])[0]
    to_nat = np.array([p.log for p in law.params])
    boot = np.where(to_nat, np.exp(boot), boot)

    heldr = resid[held]
    return Fit(
        law=law,
        arm=arm,
        n_kind=n_kind,
        points=points,
        held_out=held,
        params={k: float(v) for k, v in law.to_params(theta).items()},
        objective=obj,
        rmse_train=_rmse(resid[train]),
        rmse_heldout=_rmse(heldr),
        max_abs_heldout=float(np.abs(heldr).max()) if len(heldr) else None,
        delta=delta,
        confidence=confidence,
        boot=boot,
        n_starts=len(starts),
        seed=seed,
    )


def objective(law: Law | str, params: dict, points: Points, delta: float = HUBER_DELTA) -> float:
    """The fit's objective at given coefficients over all `points`."""
    law = get_law(law) if isinstance(law, str) else law
    return huber_objective(np.log(law.predict(params, points)) - np.log(points.loss), delta)
