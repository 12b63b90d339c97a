"""Scaling laws: fit L(N, D[, E or G]) per arm, and what the fits give.

Pure numerics (numpy + scipy): arrays in, dataclasses out, each with
`rows()` shaped like the DuckDB tables `scaling_fit`, `scaling_points` and
`compute_multiplier` (every row also says which parameter count N is, the
caller's `n_kind`). The laws and the fitting practice follow
shared/spec/scaling-laws.md:

- `chinchilla`:   L(N, D)    = c + A/N^alpha + B/D^beta
- `fine_grained`: L(N, D, G) = c + (g/G^gamma + a)/N^alpha + b/D^beta
- `joint_moe`:    L(N, D, E) = a Eh^delta N^(alpha + gamma ln Eh)
                             + b Eh^omega D^(beta + zeta ln Eh) + c
  with signed exponents (Table 3 of arXiv 2502.05172: alpha, beta < 0) and
  the transformed expert count Eh(E; E_start, E_max). E_start and E_max are
  FIXED settings of the law (default: Table 3's values), not fitted: a study's
  E grid (here at most 32, often {1, 8}) cannot identify a saturation near
  E = 290, and with Eh fixed every log term is linear in the parameters.

Every law is a logsumexp of log terms, each linear in the fitted parameters
(a, b, c, A, B, g as their logs): log L = logsumexp_k(F_k theta). The fit
minimises the SUMMED Huber loss (delta a setting, default 1e-3) of the log
residuals log Lhat - log L with L-BFGS-B and the analytic gradient, from every
point of the law's starting grid (or only the `n_starts` grid points with the
lowest starting objective, a vectorised pre-screen), and keeps the lowest
objective. Held-out points (an extrapolation set: the k largest-compute
points, or a mask) are not fitted; train and held-out RMSE of log L are
reported. Among starts the fit keeps the lowest train objective by default;
`select="rmse"` keeps the lowest train + held-out RMSE as the Joint MoE paper
does (that uses the held-out points for selection, so their RMSE is then no
longer an independent check).

Uncertainty: bootstrap over the training points (resampled with replacement,
as integer weights; held-out points stay out), each replicate refit from the
best fit plus the `boot_starts` best pre-screened grid points; percentile
intervals of every coefficient and of every derived quantity (`Fit.interval`).
Seeded: identical inputs give identical numbers. The coefficients reported are
the fit to the training points; pass `holdout=None` to fit every point.
`holdout=k` breaks ties in compute by point order.

Compute is C = 6 N D with N the caller's count (exact for the Joint MoE law's
N_act; an approximation for a non-embedding count). At a fixed E or G every
law is Chinchilla-form, L = c + m N^mu + n D^nu (mu, nu < 0), which gives the
compute-optimal allocation in closed form (spec section 1, magnitudes
a' = -mu, b' = -nu) and the frontier L*(C) = c + K C^-kappa,
kappa = a'b'/(a'+b'); `compute_optimal_numeric` minimises any law over N at
fixed C as a cross-check. The compute multiplier of an arm over the baseline
(spec section 3) at baseline compute C is C / C_arm, where C_arm is the arm's
compute to reach the baseline's loss L_b(C), both along their compute-optimal
frontiers (or both at one fixed N); 0 when the arm never reaches that loss.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import minimize, minimize_scalar
from scipy.special import huber
from threadpoolctl import threadpool_limits

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
_TABLE3 = {"E_start": 2.0732, "E_max": 290.4521}


# ---------------------------------------------------------------- inputs

@dataclass(frozen=True)
class Points:
    """Final losses of runs: N (`n_kind` of the fit), tokens D, experts E or
    granularity G where the law needs them, and optional run ids."""

    n: np.ndarray
    d: np.ndarray
    loss: np.ndarray
    e: np.ndarray | None = None
    g: np.ndarray | None = None
    run_id: Sequence[str] | None = None

    def __post_init__(self):
        m = len(np.atleast_1d(self.loss))
        for name in ("n", "d", "loss", "e", "g"):
            v = getattr(self, name)
            if v is None:
                continue
            v = np.asarray(v, dtype=float).reshape(-1)
            if len(v) != m:
                raise ConfigError(f"points.{name}", f"has {len(v)} values, loss has {m}")
            if not np.all(np.isfinite(v)) or np.any(v <= 0):
                raise ConfigError(f"points.{name}", "must be finite and > 0")
            if name == "e" and np.any(v < 1):
                raise ConfigError("points.e", "number of experts must be >= 1")
            object.__setattr__(self, name, v)
        if self.run_id is not None and len(self.run_id) != m:
            raise ConfigError("points.run_id", f"has {len(self.run_id)} values, loss has {m}")

    def __len__(self):
        return len(self.loss)

    @property
    def compute(self) -> np.ndarray:
        return 6.0 * self.n * self.d

    def subset(self, idx) -> Points:
        pick = lambda v: None if v is None else v[idx]  # noqa: E731
        rid = None if self.run_id is None else [self.run_id[i] for i in np.arange(len(self))[idx]]
        return Points(self.n[idx], self.d[idx], self.loss[idx], pick(self.e), pick(self.g), rid)


# ---------------------------------------------------------------- the laws

def transformed_experts(e, e_start: float, e_max: float) -> np.ndarray:
    """Clark et al.'s Eh: 1/Eh = 1/(E - 1 + (1/E_start - 1/E_max)^-1) + 1/E_max;
    Eh(1) = E_start, Eh -> E_max as E grows."""
    e = np.asarray(e, dtype=float)
    return 1.0 / (1.0 / (e - 1.0 + 1.0 / (1.0 / e_start - 1.0 / e_max)) + 1.0 / e_max)


@dataclass(frozen=True)
class Param:
    """One fitted parameter: `log` ones are fitted as their natural log (the
    grid and bounds are then in log space too)."""

    name: str
    grid: tuple[float, ...]
    bounds: tuple[float | None, float | None] = (None, None)
    log: bool = False


@dataclass(frozen=True)
class ChinchillaForm:
    """L = c + m N^mu + n D^nu at one fixed E or G (signed exponents, as
    Table 4 of arXiv 2502.05172)."""

    m: np.ndarray
    mu: np.ndarray
    n: np.ndarray
    nu: np.ndarray
    c: np.ndarray


@dataclass(frozen=True)
class Law:
    """A law as a logsumexp of log terms linear in the fitted parameters.

    `terms[k]` maps parameter names to their feature in log term k (a function
    of the inputs `x`: log_n, log_d, log_e_hat or log_g); `reduce` gives the
    Chinchilla form at a fixed E or G (`at`)."""

    name: str
    needs: str | None  # "e", "g" or None: the third input
    params: tuple[Param, ...]
    terms: tuple[dict[str, Callable], ...]
    reduce: Callable[[dict, float | None], ChinchillaForm]
    fixed: dict = field(default_factory=dict)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.params)

    def inputs(self, points: Points) -> dict:
        x = {"log_n": np.log(points.n), "log_d": np.log(points.d)}
        if self.needs == "e":
            if points.e is None:
                raise ConfigError("points.e", f"law {self.name!r} needs the number of experts of every point")
            x["log_e_hat"] = np.log(transformed_experts(points.e, self.fixed["E_start"], self.fixed["E_max"]))
        if self.needs == "g":
            if points.g is None:
                raise ConfigError("points.g", f"law {self.name!r} needs the granularity of every point")
            x["log_g"] = np.log(points.g)
        return x

    def features(self, points: Points) -> np.ndarray:
        """F with shape (points, terms, params): log term k = F[:, k] @ theta."""
        x = self.inputs(points)
        m = len(points)
        out = np.zeros((m, len(self.terms), len(self.params)))
        for k, term in enumerate(self.terms):
            for j, p in enumerate(self.params):
                if p.name in term:
                    out[:, k, j] = term[p.name](x) if callable(term[p.name]) else term[p.name]
        return out

    def to_theta(self, params: dict) -> np.ndarray:
        return np.array([np.log(params[p.name]) if p.log else params[p.name] for p in self.params], dtype=float)

    def to_params(self, theta) -> dict:
        theta = np.asarray(theta, dtype=float)
        return {p.name: (np.exp(theta[..., j]) if p.log else theta[..., j]) for j, p in enumerate(self.params)}

    def predict(self, params: dict, points: Points) -> np.ndarray:
        return np.exp(_log_sum_exp(self.features(points) @ self.to_theta(params))[0])

    def grid(self) -> np.ndarray:
        """Every starting point of the law's grid, in fit space (log where `log`)."""
        return np.array(list(itertools.product(*(p.grid for p in self.params))), dtype=float)


_ONE = 1.0
_LOG_C = Param("c", tuple(np.log([0.5, 1.0, 2.0])), log=True)


def _chinchilla_reduce(p, at):
    return ChinchillaForm(p["A"], -p["alpha"], p["B"], -p["beta"], p["c"])


def _fine_grained_reduce(p, g):
    _need_at("fine_grained", g, "granularity G")
    return ChinchillaForm(p["g"] / np.power(g, p["gamma"]) + p["a"], -p["alpha"], p["b"], -p["beta"], p["c"])


def _need_at(law, at, what):
    if at is None:
        raise ConfigError("at", f"law {law!r} reduces to the Chinchilla form only at a fixed {what}")


def joint_moe_law(e_start: float = _TABLE3["E_start"], e_max: float = _TABLE3["E_max"]) -> Law:
    """The Joint MoE law with its transformed expert count fixed by
    (e_start, e_max); defaults: Table 3 of arXiv 2502.05172."""
    if not 1.0 < e_start < e_max:
        raise ConfigError("joint_moe.E_start", f"need 1 < E_start < E_max, got E_start={e_start}, E_max={e_max}")

    def reduce(p, e):
        _need_at("joint_moe", e, "number of experts E")
        le = np.log(transformed_experts(e, e_start, e_max))
        return ChinchillaForm(p["a"] * np.exp(p["delta"] * le), p["alpha"] + p["gamma"] * le,
                              p["b"] * np.exp(p["omega"] * le), p["beta"] + p["zeta"] * le, p["c"])

    # The paper's grid: alpha, beta in {0.05, 0.25, 0.5} are magnitudes; the
    # signed exponents here start at their negatives. A, B in {30, 100, 300},
    # C in {0.5, 1, 2}, delta, gamma, omega, zeta in {-0.5, 0, 0.5}.
    signed = (-0.05, -0.25, -0.5)
    tilt = (-0.5, 0.0, 0.5)
    return Law(
        name="joint_moe", needs="e",
        params=(
            Param("a", tuple(np.log([30.0, 100.0, 300.0])), log=True),
            Param("alpha", signed, (-3.0, 0.0)),
            Param("delta", tilt, (-5.0, 5.0)),
            Param("gamma", tilt, (-2.0, 2.0)),
            Param("b", tuple(np.log([30.0, 100.0, 300.0])), log=True),
            Param("beta", signed, (-3.0, 0.0)),
            Param("omega", tilt, (-5.0, 5.0)),
            Param("zeta", tilt, (-2.0, 2.0)),
            _LOG_C,
        ),
        terms=(
            {"a": _ONE, "delta": lambda x: x["log_e_hat"], "alpha": lambda x: x["log_n"],
             "gamma": lambda x: x["log_e_hat"] * x["log_n"]},
            {"b": _ONE, "omega": lambda x: x["log_e_hat"], "beta": lambda x: x["log_d"],
             "zeta": lambda x: x["log_e_hat"] * x["log_d"]},
            {"c": _ONE},
        ),
        reduce=reduce,
        fixed={"E_start": float(e_start), "E_max": float(e_max)},
    )


CHINCHILLA = Law(
    # Grid of the Chinchilla replication (arXiv 2404.10102): alpha, beta in
    # {0, 0.5, ..., 2}, log c in {-1, -0.5, ..., 1}, log A, log B in {0, 5, ..., 25}.
    name="chinchilla", needs=None,
    params=(
        Param("A", (0.0, 5.0, 10.0, 15.0, 20.0, 25.0), log=True),
        Param("alpha", (0.0, 0.5, 1.0, 1.5, 2.0), (0.0, 3.0)),
        Param("B", (0.0, 5.0, 10.0, 15.0, 20.0, 25.0), log=True),
        Param("beta", (0.0, 0.5, 1.0, 1.5, 2.0), (0.0, 3.0)),
        Param("c", (-1.0, -0.5, 0.0, 0.5, 1.0), log=True),
    ),
    terms=(
        {"A": _ONE, "alpha": lambda x: -x["log_n"]},
        {"B": _ONE, "beta": lambda x: -x["log_d"]},
        {"c": _ONE},
    ),
    reduce=_chinchilla_reduce,
)

FINE_GRAINED = Law(
    # The spec gives no grid for this law; this one spans the Joint MoE grid's
    # ranges: exponents {0.05, 0.25, 0.5}, a, b, g in {3, 30, 300},
    # gamma in {0, 0.5, 1}, c in {0.5, 1, 2}. The N term is split in two:
    # (g/G^gamma + a)/N^alpha = g G^-gamma N^-alpha + a N^-alpha.
    name="fine_grained", needs="g",
    params=(
        Param("a", tuple(np.log([3.0, 30.0, 300.0])), log=True),
        Param("alpha", (0.05, 0.25, 0.5), (0.0, 3.0)),
        Param("b", tuple(np.log([3.0, 30.0, 300.0])), log=True),
        Param("beta", (0.05, 0.25, 0.5), (0.0, 3.0)),
        Param("g", tuple(np.log([3.0, 30.0, 300.0])), log=True),
        Param("gamma", (0.0, 0.5, 1.0), (-3.0, 3.0)),
        _LOG_C,
    ),
    terms=(
        {"g": _ONE, "gamma": lambda x: -x["log_g"], "alpha": lambda x: -x["log_n"]},
        {"a": _ONE, "alpha": lambda x: -x["log_n"]},
        {"b": _ONE, "beta": lambda x: -x["log_d"]},
        {"c": _ONE},
    ),
    reduce=_fine_grained_reduce,
)

JOINT_MOE = joint_moe_law()
LAWS = {law.name: law for law in (CHINCHILLA, FINE_GRAINED, JOINT_MOE)}

# Published coefficients (spec section 1), in each law's parameter names.
PUBLISHED = {
    "chinchilla": {"A": 482.0, "alpha": 0.3478, "B": 2085.0, "beta": 0.3658, "c": 1.82},  # replication
    "fine_grained": {"a": 18.1, "alpha": 0.115, "b": 30.8, "beta": 0.147, "g": 2.1, "gamma": 0.58, "c": 0.47},
    "joint_moe": {"a": 35.91, "alpha": -0.1889, "delta": -0.2285, "gamma": 0.0098, "b": 35.98,
                  "beta": -0.1775, "omega": 0.5529, "zeta": -0.0259, "c": 1.3637},
}


def get_law(name: str) -> Law:
    if name not in LAWS:
        raise ConfigError("law", f"unknown law {name!r}; allowed: {', '.join(LAWS)}")
    return LAWS[name]


# ---------------------------------------------------------------- objective

def huber_objective(residuals, delta: float = HUBER_DELTA, weights=None) -> float:
    """SUM over points (weighted by resample counts) of the Huber loss of the
    log residuals: r^2/2 where |r| <= delta, delta (|r| - delta/2) beyond."""
    h = huber(delta, np.asarray(residuals, dtype=float))
    return float(h.sum() if weights is None else h @ weights)


def _log_sum_exp(t):
    """log sum_k exp(t[..., k]) and the softmax weights over k (written out:
    scipy.special.logsumexp costs ~5x more per call, and this is the fit's
    inner loop)."""
    top = t.max(axis=-1, keepdims=True)
    e = np.exp(t - top)
    s = e.sum(axis=-1, keepdims=True)
    return (top + np.log(s))[..., 0], e / s


def _objective(theta, feats, target, delta, weights):
    """Summed Huber loss and its gradient: d log Lhat / d theta is the softmax
    over terms of the (linear) term features. `feats` is (points * terms,
    params), the terms of each point adjacent."""
    lse, soft = _log_sum_exp((feats @ theta).reshape(len(target), -1))
    r = lse - target
    psi = np.clip(r, -delta, delta) * weights
    grad = (psi[:, None] * soft).reshape(-1) @ feats
    return huber_objective(r, delta, weights), grad


def _batch_objective(thetas, feats, target, delta, weights):
    """Objective of many starting points at once (the grid pre-screen)."""
    out = np.empty(len(thetas))
    for s in range(0, len(thetas), 2048):
        t = np.einsum("mtp,kp->kmt", feats, thetas[s:s + 2048])
        out[s:s + 2048] = huber(delta, _log_sum_exp(t)[0] - target) @ weights
    return out


def _minimise(start, feats, target, delta, weights, bounds):
    res = minimize(_objective, start, args=(feats, target, delta, weights), jac=True,
                   method="L-BFGS-B", bounds=bounds, options=_LBFGS)
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

    def interval(self, quantity: Callable[[dict], np.ndarray]) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """(value, ci_low, ci_high) of `quantity(params)`, a function of the
        coefficients that broadcasts over arrays of them: the point estimate
        and the percentile interval over the bootstrap replicates. No interval
        (None) without replicates, or where any replicate leaves the quantity
        undefined (non-finite): dropping those would flatter it."""
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
        base = {"law": self.law.name, "arm": self.arm, "n_kind": self.n_kind, "rmse_train": self.rmse_train,
                "rmse_heldout": self.rmse_heldout, "n_points": self.n_points}
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
        return [{
            "law": self.law.name, "arm": self.arm, "n_kind": self.n_kind,
            "run_id": None if p.run_id is None else p.run_id[i],
            "n_params": float(p.n[i]), "tokens": float(p.d[i]),
            "experts": None if p.e is None else float(p.e[i]),
            "granularity": None if p.g is None else float(p.g[i]),
            "tokens_per_param": float(p.d[i] / p.n[i]), "loss": float(p.loss[i]),
            "held_out": bool(self.held_out[i]),
        } for i in range(len(p))]


def _ci_row(name, value, lo, hi):
    f = lambda v: None if v is None else float(v)  # noqa: E731
    return {"parameter": name, "value": f(value), "ci_low": f(lo), "ci_high": f(hi)}


def _derived(law: Law, at, budgets) -> dict[tuple[str, float | None], Callable]:
    """Derived quantities at one fixed E or G, keyed by (name, budget)."""
    form = lambda p: law.reduce(p, at)  # noqa: E731
    out = {
        ("m", None): lambda p: form(p).m, ("mu", None): lambda p: form(p).mu,
        ("n", None): lambda p: form(p).n, ("nu", None): lambda p: form(p).nu,
        ("N_opt_exponent", None): lambda p: _exponents(form(p))[0],
        ("D_opt_exponent", None): lambda p: _exponents(form(p))[1],
    }
    for c in budgets:
        out[("N_opt", c)] = lambda p, c=c: compute_optimal(form(p), c)[0]
        out[("D_opt", c)] = lambda p, c=c: compute_optimal(form(p), c)[1]
        out[("L_opt", c)] = lambda p, c=c: frontier_loss(form(p), c)
    return out


def percentile_interval(reps: np.ndarray, confidence: float = CONFIDENCE):
    """Percentile interval over the leading (replicate) axis; None where any
    replicate is non-finite."""
    reps = np.asarray(reps, dtype=float)
    tail = 50.0 * (1.0 - confidence)
    lo, hi = np.percentile(reps, [tail, 100.0 - tail], axis=0)
    bad = ~np.all(np.isfinite(reps), axis=0)
    if np.ndim(lo) == 0:
        return (None, None) if bad else (lo, hi)
    return np.where(bad, np.nan, lo), np.where(bad, np.nan, hi)


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
        mask[np.argsort(points.compute, kind="stable")[m - holdout:]] = True
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
        return _fit(get_law(law) if isinstance(law, str) else law, points, arm, n_kind, holdout, delta,
                    n_starts, select, n_bootstrap, boot_starts, confidence, seed)


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
        raise ConfigError("points", f"{train.sum()} training points cannot fit {len(law.params)} parameters of {law.name!r}")
    ft, yt, ones = feats[train], target[train], np.ones(int(train.sum()))
    flat = lambda f: f.reshape(-1, f.shape[2])  # noqa: E731
    bounds = [p.bounds for p in law.params]

    grid = law.grid()
    order = np.argsort(_batch_objective(grid, ft, yt, delta, ones), kind="stable")
    starts = grid if n_starts is None else grid[order[:n_starts]]
    best = None
    for start in starts:
        theta, obj = _minimise(start, flat(ft), yt, delta, ones, bounds)
        r = _log_sum_exp(feats @ theta)[0] - target
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
        law=law, arm=arm, n_kind=n_kind, points=points, held_out=held,
        params={k: float(v) for k, v in law.to_params(theta).items()}, objective=obj,
        rmse_train=_rmse(resid[train]), rmse_heldout=_rmse(heldr),
        max_abs_heldout=float(np.abs(heldr).max()) if len(heldr) else None,
        delta=delta, confidence=confidence, boot=boot, n_starts=len(starts), seed=seed,
    )


def objective(law: Law | str, params: dict, points: Points, delta: float = HUBER_DELTA) -> float:
    """The fit's objective at given coefficients over all `points`."""
    law = get_law(law) if isinstance(law, str) else law
    return huber_objective(np.log(law.predict(params, points)) - np.log(points.loss), delta)


# ---------------------------------------------------------------- what the fits give

def _exponents(form: ChinchillaForm):
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


def compute_optimal_numeric(law: Law | str, params: dict, compute: float, at: float | None = None) -> tuple[float, float]:
    """(N_opt, D_opt) by minimising the law over log N at fixed C = 6 N D
    (scipy's bounded Brent), for any law; `at` is E or G where needed."""
    law = get_law(law) if isinstance(law, str) else law
    third = {} if law.needs is None else {law.needs: np.array([float(at)])}
    if law.needs is not None:
        _need_at(law.name, at, law.needs.upper())

    def loss(log_n):
        n = np.exp(log_n)
        return float(law.predict(params, Points(np.array([n]), np.array([compute / (6.0 * n)]), np.ones(1), **third))[0])

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
        return [{"law": self.law, "n_params": float(n), "tokens": float(d), "loss": float(self.loss[i, j])}
                for i, n in enumerate(self.n) for j, d in enumerate(self.d)]


def iso_loss(fit_or_law, params: dict | None = None, n_range=(1e6, 1e10), d_range=(1e8, 1e12),
             num: int = 50, at: float | None = None) -> IsoLoss:
    """The data of iso-loss contours: the law's L over a log-spaced (N, D) grid."""
    law = fit_or_law.law if isinstance(fit_or_law, Fit) else (get_law(fit_or_law) if isinstance(fit_or_law, str) else fit_or_law)
    params = fit_or_law.params if isinstance(fit_or_law, Fit) else params
    n, d = np.geomspace(*n_range, num), np.geomspace(*d_range, num)
    nn, dd = np.meshgrid(n, d, indexing="ij")
    third = {} if law.needs is None else {law.needs: np.full(nn.size, float(at if at is not None else np.nan))}
    if law.needs is not None:
        _need_at(law.name, at, law.needs.upper())
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
    target = base.c + base.m * fixed_n ** base.mu + base.n * np.power(d, base.nu)
    gap = target - arm.c - arm.m * fixed_n ** arm.mu
    with np.errstate(all="ignore"):
        d_arm = np.where(gap > 0, np.power(gap / arm.n, 1.0 / arm.nu), np.inf)
    return d / d_arm


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
        return [{"law": self.law, "arm": self.arm, "n_kind": self.n_kind, "compute": float(c),
                 "multiplier": f(m), "ci_low": f(lo), "ci_high": f(hi), "extrapolated": bool(x)}
                for c, m, lo, hi, x in zip(self.compute, self.multiplier, self.ci_low, self.ci_high, self.extrapolated)]


def compute_multiplier(base: Fit, arm: Fit, budgets, at: float | None = None,
                       fixed_n: float | None = None) -> ComputeMultiplier:
    """The arm's compute multiplier over `base` at each baseline budget, with
    the percentile interval over the two fits' bootstrap replicates (replicate
    b of each, each refit on its own resample). `extrapolated`: the budget is
    beyond the largest training compute of either fit; at a fixed N also
    where N or the tokens C/(6N) leave either fit's training range. With the
    same seed and the same point order the two fits resample the same grid
    cells (a paired bootstrap); different seeds resample independently."""
    if base.law.name != arm.law.name or base.n_kind != arm.n_kind:
        raise ConfigError("arm", f"compare one law and one parameter count: {base.law.name}/{base.n_kind} "
                                 f"vs {arm.law.name}/{arm.n_kind}")
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
    return ComputeMultiplier(law.name, arm.arm, base.arm, base.n_kind, at, fixed_n, budgets, value,
                             np.asarray(lo, dtype=float), np.asarray(hi, dtype=float), extrapolated)
