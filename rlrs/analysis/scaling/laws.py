"""The scaling laws as data: each a logsumexp of log terms linear in its
fitted parameters, with its starting grid, bounds and reduction to the
Chinchilla form at a fixed E or G (shared/spec/scaling-laws.md section 1).

- `chinchilla`:   L(N, D)    = c + A/N^alpha + B/D^beta
- `fine_grained`: L(N, D, G) = c + (g/G^gamma + a)/N^alpha + b/D^beta
- `joint_moe`:    L(N, D, E) = a Eh^delta N^(alpha + gamma ln Eh)
                             + b Eh^omega D^(beta + zeta ln Eh) + c
  with signed exponents (Table 3 of arXiv 2502.05172: alpha, beta < 0) and
  the transformed expert count Eh(E; E_start, E_max). E_start and E_max are
  FIXED settings of the law (default: Table 3's values), not fitted: a study's
  E grid (here at most 32, often {1, 8}) cannot identify a saturation near
  E = 290, and with Eh fixed every log term is linear in the parameters.

`Points` are a fit's inputs: N (the caller's parameter count), tokens D,
E or G where the law needs them, the final losses and the run ids.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from rlrs.errors import ConfigError

_TABLE3 = {"E_start": 2.0732, "E_max": 290.4521}


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
        return np.exp(log_sum_exp(self.features(points) @ self.to_theta(params))[0])

    def grid(self) -> np.ndarray:
        """Every starting point of the law's grid, in fit space (log where `log`)."""
        return np.array(list(itertools.product(*(p.grid for p in self.params))), dtype=float)


def log_sum_exp(t):
    """log sum_k exp(t[..., k]) and the softmax weights over k (written out:
    scipy.special.logsumexp costs ~5x more per call, and this is the fit's
    inner loop)."""
    top = t.max(axis=-1, keepdims=True)
    e = np.exp(t - top)
    s = e.sum(axis=-1, keepdims=True)
    return (top + np.log(s))[..., 0], e / s


_ONE = 1.0
_LOG_C = Param("c", tuple(np.log([0.5, 1.0, 2.0])), log=True)


def _chinchilla_reduce(p, at):
    return ChinchillaForm(p["A"], -p["alpha"], p["B"], -p["beta"], p["c"])


def _fine_grained_reduce(p, g):
    need_at("fine_grained", g, "granularity G")
    return ChinchillaForm(p["g"] / np.power(g, p["gamma"]) + p["a"], -p["alpha"], p["b"], -p["beta"], p["c"])


def need_at(law, at, what):
    if at is None:
        raise ConfigError("at", f"law {law!r} reduces to the Chinchilla form only at a fixed {what}")


def joint_moe_law(e_start: float = _TABLE3["E_start"], e_max: float = _TABLE3["E_max"]) -> Law:
    """The Joint MoE law with its transformed expert count fixed by
    (e_start, e_max); defaults: Table 3 of arXiv 2502.05172."""
    if not 1.0 < e_start < e_max:
        raise ConfigError("joint_moe.E_start", f"need 1 < E_start < E_max, got E_start={e_start}, E_max={e_max}")

    def reduce(p, e):
        need_at("joint_moe", e, "number of experts E")
        le = np.log(transformed_experts(e, e_start, e_max))
        return ChinchillaForm(
            p["a"] * np.exp(p["delta"] * le),
            p["alpha"] + p["gamma"] * le,
            p["b"] * np.exp(p["omega"] * le),
            p["beta"] + p["zeta"] * le,
            p["c"],
        )

    # The paper's grid: alpha, beta in {0.05, 0.25, 0.5} are magnitudes; the
    # signed exponents here start at their negatives. A, B in {30, 100, 300},
    # C in {0.5, 1, 2}, delta, gamma, omega, zeta in {-0.5, 0, 0.5}.
    signed = (-0.05, -0.25, -0.5)
    tilt = (-0.5, 0.0, 0.5)
    return Law(
        name="joint_moe",
        needs="e",
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
            {
                "a": _ONE,
                "delta": lambda x: x["log_e_hat"],
                "alpha": lambda x: x["log_n"],
                "gamma": lambda x: x["log_e_hat"] * x["log_n"],
            },
            {
                "b": _ONE,
                "omega": lambda x: x["log_e_hat"],
                "beta": lambda x: x["log_d"],
                "zeta": lambda x: x["log_e_hat"] * x["log_d"],
            },
            {"c": _ONE},
        ),
        reduce=reduce,
        fixed={"E_start": float(e_start), "E_max": float(e_max)},
    )


CHINCHILLA = Law(
    # Grid of the Chinchilla replication (arXiv 2404.10102): alpha, beta in
    # {0, 0.5, ..., 2}, log c in {-1, -0.5, ..., 1}, log A, log B in {0, 5, ..., 25}.
    name="chinchilla",
    needs=None,
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
    name="fine_grained",
    needs="g",
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
    "joint_moe": {
        "a": 35.91,
        "alpha": -0.1889,
        "delta": -0.2285,
        "gamma": 0.0098,
        "b": 35.98,
        "beta": -0.1775,
        "omega": 0.5529,
        "zeta": -0.0259,
        "c": 1.3637,
    },
}


def get_law(name: str) -> Law:
    if name not in LAWS:
        raise ConfigError("law", f"unknown law {name!r}; allowed: {', '.join(LAWS)}")
    return LAWS[name]
