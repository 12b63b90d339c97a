"""The study's numbers: speedups, transfer, sweeps, regret, ablations.

Frames in, frames out, no charts (spec section 6). Everything reads the
study's DuckDB (tables `runs`, `metrics`, `plan`, `studies` written by
rlrs.db) and returns polars frames with fixed schemas, so a tiny study still
gets every table and view, only with fewer rows.

Conventions used throughout:

- A run's loss is its `final_eval_loss` (the same validation tokens for every
  run). Only runs with status `completed` count; every frame that drops runs
  says how many in a `note` or `n_excluded` column.
- One run id can be asked for by several sweeps (the baseline at its best lr
  sits in `main`, `lr` and `ladder`): membership comes from `plan`, one row
  per (run, sweep), and groups are deduplicated by run id before averaging.
- A "group" is the runs that differ only by seed: same size, arm, lr, steps.
- Best lr: among an arm's groups at one size and length, the lowest mean
  final loss. Groups where a seed diverged are not eligible (that lr is
  unstable; averaging only the surviving seeds would flatter it).

Speedup, two definitions, both as T*/T - 1 ("the baseline needs X% more
steps") and saved = 1 - T/T* ("X% fewer steps"):

- `ladder`: the baseline's final loss L(T) over its run lengths, mean over
  seeds per length, interpolated with a monotone piecewise cubic (PCHIP) in
  log T; T* solves L(T*) = the arm's mean final loss at its length T. PCHIP
  never overshoots the data and never extrapolates; on a constructed power
  law a + b*T^-c it recovers T* within 0.2% (see tests).
- `target`: steps the baseline's eval curve (its longest run, mean over
  seeds, linear between eval points) needs to first reach the arm's loss.

Outside the baseline's range nothing is extrapolated: speedup is NULL and
`bound` says '> x' (arm better than the longest baseline) or '< x' (worse than
the shortest). Intervals: percentile bootstrap over seeds
(scipy.stats.bootstrap, multi-sample: the arm's seeds and the baseline's seeds
per length resampled independently), fixed seed, 2000 resamples, 95%.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import duckdb
import numpy as np
import polars as pl
from scipy.interpolate import PchipInterpolator
from scipy.stats import bootstrap

from rlrs.errors import ConfigError

BASELINE = "baseline"
CONFIDENCE = 0.95
N_RESAMPLES = 2000
BOOTSTRAP_SEED = 0
# Rows per chart stay well under Altair's 5,000-row limit whatever the study size.
ROW_BUDGET = 4000
MAX_POINTS_PER_SERIES = 200
MIN_POINTS_PER_SERIES = 10

# Sweeps whose runs compete for an arm's best lr at its main length.
_LR_SWEEPS = ("main", "lr")

# ---------------------------------------------------------------- schemas
# Fixed output schemas: empty studies still produce typed, queryable tables.
F, I, S = pl.Float64, pl.Int64, pl.Utf8

SPEEDUP_SCHEMA = {
    "study": S, "size": S, "arm": S, "definition": S,
    "speedup": F, "ci_low": F, "ci_high": F, "bound": S, "bound_value": F,
    "saved": F, "saved_ci_low": F, "saved_ci_high": F,
    "n_seeds": I, "steps": I, "t_star": F, "arm_loss": F, "arm_lr": F,
    "baseline_lr": F, "baseline_lengths": I, "baseline_seeds": I, "family": S,
    "params_nonembedding": I, "params_active_nonembedding": I,
    "baseline_loss": F, "loss_gap": F, "loss_gap_ci_low": F, "loss_gap_ci_high": F, "note": S,
}
FINAL_LOSSES_SCHEMA = {
    "study": S, "size": S, "arm": S, "lr": F, "steps": I,
    "mean_loss": F, "std_loss": F, "min_loss": F, "max_loss": F,
    "n": I, "n_excluded": I, "params_nonembedding": I,
}
TRANSFER_SCHEMA = {
    "study": S, "arm": S, "definition": S, "family": S, "size": S,
    "params_nonembedding": I, "params_active_nonembedding": I,
    "speedup": F, "ci_low": F, "ci_high": F, "bound": S, "bound_value": F, "n_seeds": I,
}
LR_SWEEP_SCHEMA = {
    "study": S, "size": S, "arm": S, "lr": F, "lr_factor": F, "steps": I,
    "mean_loss": F, "std_loss": F, "n": I, "n_excluded": I, "n_diverged": I,
    "is_best": pl.Boolean, "run_ids": S,
}
USWEEP_SCHEMA = {
    "study": S, "size": S, "base_arm": S, "component": S, "which": S,
    "factor": F, "mean_loss": F, "std_loss": F, "n": I, "n_excluded": I,
    "is_best": pl.Boolean, "params_nonembedding": I, "run_ids": S,
}
REGRET_SCHEMA = {
    "study": S, "parameter": S, "kind": S, "size": S, "reference_size": S,
    "chosen_factor": F, "best_factor": F, "loss_at_chosen": F,
    "best_loss": F, "regret": F, "note": S,
}
ABLATION_SCHEMA = {
    "study": S, "size": S, "kind": S, "component": S, "reference_arm": S,
    "loss": F, "reference_loss": F, "delta": F, "n": I, "n_reference": I,
    "n_excluded": I, "note": S,
}
COMPARED_SCHEMA = {
    "study": S, "size": S, "arm": S, "role": S, "run_id": S, "lr": F, "steps": I, "seed": I,
}
CURVE_SCHEMA = {
    "study": S, "size": S, "arm": S, "role": S, "label": S, "step": I,
    "train_loss": F, "eval_loss": F, "n_runs": I, "run_ids": S,
}
UPDATE_SCHEMA = {"study": S, "size": S, "arm": S, "component": S, "step": I, "update": F, "n_runs": I}
SCHEDULE_SCHEMA = {"study": S, "size": S, "arm": S, "component": S, "step": I, "lr": F, "run_id": S}
TUNE_PROGRESS_SCHEMA = {
    "study": S, "size": S, "family": S, "arm": S, "step": I, "pass": I, "parameter": S, "factor": F,
    "run_id": S, "score": F, "accepted": pl.Boolean, "best_score": F, "runs_spent": I,
}
TUNED_SCHEMA = {
    "study": S, "size": S, "family": S, "arm": S, "space": S, "parameter": S,
    "start_value": F, "value": F, "paper_value": F, "best_score": F, "runs_spent": I, "stop_reason": S,
}

def _frame(rows: list[dict], schema: dict) -> pl.DataFrame:
    """A frame with exactly `schema`'s columns and types, even when empty."""
    return pl.DataFrame([{k: r.get(k) for k in schema} for r in rows], schema=schema, orient="row")


# ---------------------------------------------------------------- loading
def study_names(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Every study the database knows (plan, runs or studies table)."""
    names: set[str] = set()
    for table, col in (("studies", "name"), ("plan", "study"), ("runs", "study")):
        if _has_table(con, table):
            names |= {r[0] for r in con.execute(f"SELECT DISTINCT {col} FROM {table} WHERE {col} IS NOT NULL").fetchall()}
    return sorted(names)


def _has_table(con: duckdb.DuckDBPyConnection, name: str) -> bool:
    return con.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = ? AND table_schema = current_schema()", [name]
    ).fetchall()[0][0] > 0  # fetchall: DuckDB 2 blocks the connection on a half-read result


def load_members(con: duckdb.DuckDBPyConnection, study: str) -> pl.DataFrame:
    """One row per (run id, sweep) of `study`, with the run's results.

    Membership comes from `plan` (a run can serve several sweeps); runs that
    were ingested without a plan row fall back to their own labels. Planned
    runs with no result yet get status `missing`. Sweep tags are unpacked
    into typed columns.
    """
    has_plan = _has_table(con, "plan")
    plan_part = (
        "SELECT run_id, size, arm, sweep, CAST(tags AS VARCHAR) AS tags FROM plan WHERE study = $study"
        if has_plan
        else "SELECT NULL::VARCHAR run_id, NULL size, NULL arm, NULL sweep, NULL tags WHERE false"
    )
    not_planned = "AND run_id NOT IN (SELECT run_id FROM plan WHERE study = $study)" if has_plan else ""
    query = f"""
        WITH m AS (
            {plan_part}
            UNION
            SELECT run_id, size, arm, sweep, CAST(tags AS VARCHAR) FROM runs
            WHERE study = $study {not_planned}
        )
        SELECT m.run_id, m.size, m.arm, m.sweep, m.tags,
               r.seed, r.lr, r.steps, coalesce(r.status, 'missing') AS status,
               CASE WHEN r.status = 'completed' THEN r.final_eval_loss END AS final_eval_loss,
               r.error, coalesce(r.moe, false) AS moe,
               r.params_total, r.params_active, r.params_nonembedding, r.params_active_nonembedding,
               TRY_CAST(json_extract_string(m.tags, '$.lr_factor') AS DOUBLE) AS lr_factor,
               TRY_CAST(json_extract_string(m.tags, '$.length_factor') AS DOUBLE) AS length_factor,
               json_extract_string(m.tags, '$.component') AS component,
               json_extract_string(m.tags, '$.which') AS which,
               TRY_CAST(json_extract_string(m.tags, '$.factor') AS DOUBLE) AS factor,
               json_extract_string(m.tags, '$.base') AS base
        FROM m LEFT JOIN runs r USING (run_id)
        ORDER BY m.size, m.arm, m.sweep, m.run_id
    """
    return con.sql(query, params={"study": study}).pl()


def _completed(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.filter(pl.col("status") == "completed")


def _size_order(members: pl.DataFrame) -> list[str]:
    """Sizes from smallest to largest non-embedding parameter count (name as
    tie-break). Runs without a size label (standalone runs) have no place in
    a size comparison."""
    sizes = (
        members.drop_nulls("size").group_by("size")
        .agg(pl.col("params_nonembedding").max().alias("p"))
        .sort(["p", "size"], nulls_last=True)
    )
    return sizes["size"].to_list()


def _size_family(members: pl.DataFrame) -> dict[str, str]:
    """size -> 'moe' or 'dense': sizes are compared along a line within a family only."""
    rows = members.group_by("size").agg(pl.col("moe").any())
    return {r["size"]: "moe" if r["moe"] else "dense" for r in rows.iter_rows(named=True)}


def _size_params(members: pl.DataFrame) -> dict[str, tuple[int | None, int | None]]:
    rows = members.group_by("size").agg(
        pl.col("params_nonembedding").max(), pl.col("params_active_nonembedding").max()
    )
    return {r["size"]: (r["params_nonembedding"], r["params_active_nonembedding"]) for r in rows.iter_rows(named=True)}


# ---------------------------------------------------------------- groups
@dataclass
class Group:
    """Runs differing only by seed (deduplicated by run id)."""

    size: str
    arm: str
    lr: float
    steps: int
    losses: np.ndarray  # completed runs' final losses, ordered by seed
    run_ids: list[str]  # completed runs, same order
    seeds: list[int]
    excluded: dict[str, str] = field(default_factory=dict)  # run id -> status, non-completed runs

    @property
    def n_excluded(self) -> int:
        return len(self.excluded)

    @property
    def n_diverged(self) -> int:
        return sum(st == "diverged" for st in self.excluded.values())

    @property
    def mean(self) -> float:
        return float(self.losses.mean()) if len(self.losses) else math.nan


def _groups(frame: pl.DataFrame) -> list[Group]:
    """Group runs by (size, arm, lr, steps), one row per run id."""
    if frame.is_empty():
        return []
    runs = frame.unique(subset="run_id", keep="first").sort(["size", "arm", "lr", "steps", "seed", "run_id"])
    out = []
    for key, part in runs.group_by(["size", "arm", "lr", "steps"], maintain_order=True):
        done = _completed(part)
        out.append(
            Group(
                size=key[0], arm=key[1], lr=key[2], steps=key[3],
                losses=done["final_eval_loss"].to_numpy().astype(float),
                run_ids=done["run_id"].to_list(), seeds=done["seed"].to_list(),
                excluded=dict(part.filter(pl.col("status") != "completed").select("run_id", "status").iter_rows()),
            )
        )
    return out


def best_group(groups: list[Group]) -> Group | None:
    """The group with the lowest mean final loss over its completed runs;
    ties go to the first (lowest lr). Groups where a seed diverged compete
    only when every group has one: an lr that diverges on some seeds is
    unstable, and the mean of its survivors would flatter it.

    When the groups hold different seeds (a sweep point with 1 seed against
    main runs with 3, or a seed still missing), they are ranked on the seeds
    they all share: the minimum of one noisy draw against a mean of three
    would favour the single draws (winner's curse). The chosen group then
    keeps all its seeds for the comparison."""
    pool = _lr_pool(groups)
    if not pool:
        return None
    shared = _shared_seeds(pool)
    return min(pool, key=lambda g: _mean_over(g, shared))


def _lr_pool(groups: list[Group]) -> list[Group]:
    """The groups that compete for the best lr: those with completed runs and
    no diverged seed, or all with completed runs when every one has one."""
    done = [g for g in groups if len(g.losses)]
    return [g for g in done if g.n_diverged == 0] or done


def _shared_seeds(groups: list[Group]) -> set[int] | None:
    """Seeds completed in every group, or None when they all hold the same
    seeds or share none (then each group's full mean is used)."""
    sets = [set(g.seeds) for g in groups]
    shared = set.intersection(*sets) if sets else set()
    return shared if shared and any(s != shared for s in sets) else None


def _mean_over(g: Group, seeds: set[int] | None) -> float:
    if seeds is None:
        return g.mean
    return float(np.mean([loss for loss, seed in zip(g.losses, g.seeds) if seed in seeds]))


def choice_notes(groups: list[Group], chosen: Group | None) -> list[str]:
    """Say when the lr choice was shaped by diverged seeds."""
    if chosen is None:
        return []
    notes = [f"lr {g.lr:g} not chosen despite a lower mean: {g.n_diverged} diverged seed(s)"
             for g in groups if g is not chosen and g.n_diverged and len(g.losses) and g.mean < chosen.mean]
    if chosen.n_diverged:
        notes.append(f"compared lr {chosen.lr:g} has {chosen.n_diverged} diverged seed(s) (every lr has some)")
    shared = _shared_seeds(_lr_pool(groups))
    if shared is not None:
        notes.append(f"best lr chosen on the seed(s) every lr point has ({', '.join(map(str, sorted(shared)))})")
    lrs = sorted({g.lr for g in groups if len(g.losses)})
    if len(lrs) >= 3 and chosen.lr in (lrs[0], lrs[-1]):
        notes.append(f"best lr {chosen.lr:g} is at the edge of the sweep: the optimum may lie beyond it")
    return notes


def _main_steps(members: pl.DataFrame, size: str, arm: str) -> int | None:
    main = members.filter((pl.col("size") == size) & (pl.col("arm") == arm) & (pl.col("sweep") == "main"))
    steps = main["steps"].drop_nulls()
    return int(steps.max()) if len(steps) else None


def _lr_candidates(members: pl.DataFrame, size: str, arm: str) -> list[Group]:
    """The arm's groups at `size` that compete for its best lr: main and
    lr-sweep runs at its main length."""
    steps = _main_steps(members, size, arm)
    if steps is None:
        return []
    return _groups(members.filter(
        (pl.col("size") == size) & (pl.col("arm") == arm)
        & pl.col("sweep").is_in(_LR_SWEEPS) & (pl.col("steps") == steps)
    ))


def compared_group(members: pl.DataFrame, size: str, arm: str) -> Group | None:
    """The arm at `size` as compared: its best lr among the main and lr-sweep
    runs at its main length (just the main runs when there is no lr sweep)."""
    return best_group(_lr_candidates(members, size, arm))


def baseline_ladder(members: pl.DataFrame, size: str, baseline: str = BASELINE) -> list[Group]:
    """The baseline's points L(T) at `size`, shortest first, all at ONE lr:
    the baseline's best lr at its main length (main and lr-sweep runs).

    Mixing lrs across lengths would compare the arm with a baseline trained
    worse at some lengths (and bend L(T)), so ladder runs at any other lr are
    left out; with fewer than two lengths left there is no ladder estimate."""
    best = compared_group(members, size, baseline)
    if best is None:
        return []
    cand = members.filter(
        (pl.col("size") == size) & (pl.col("arm") == baseline)
        & pl.col("sweep").is_in(("main", "lr", "ladder")) & (pl.col("lr") == best.lr)
    )
    return sorted(_groups(cand), key=lambda g: g.steps)


def ladder_lrs(members: pl.DataFrame, size: str, baseline: str = BASELINE) -> list[float]:
    """The lrs the baseline's ladder runs were trained at (for notes)."""
    runs = members.filter((pl.col("size") == size) & (pl.col("arm") == baseline) & (pl.col("sweep") == "ladder"))
    return sorted(set(runs["lr"].drop_nulls().to_list()))


# ---------------------------------------------------------------- crossings
# Vectorized over a leading batch axis (the bootstrap's resamples): one call
# computes T* for thousands of resampled curves.
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
        samples, statistic, n_resamples=N_RESAMPLES, method="percentile", confidence_level=CONFIDENCE,
        vectorized=True, paired=False, rng=np.random.default_rng(BOOTSTRAP_SEED),
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
        notes.append(f"lower CI end outside the baseline's range ({'<' if low < lo_edge else '>'} "
                     f"{lo_edge if low < lo_edge else hi_edge:.2f})")
        low = None
    if high > hi_edge or high < lo_edge:
        notes.append(f"upper CI end outside the baseline's range ({'>' if high > hi_edge else '<'} "
                     f"{hi_edge if high > hi_edge else lo_edge:.2f})")
        high = None
    est.ci_low, est.ci_high = low, high
    return est


def _excluded_note(groups: list[Group]) -> list[str]:
    """'excluded N non-completed run(s) (M diverged)', each run counted once."""
    excluded = {rid: st for g in groups for rid, st in g.excluded.items()}
    if not excluded:
        return []
    div = sum(st == "diverged" for st in excluded.values())
    return [f"excluded {len(excluded)} non-completed run(s) ({div} diverged)"]


# ---------------------------------------------------------------- speedup
def _eval_curves(evals: pl.DataFrame, run_ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(steps trained, [seed x eval point] losses) for the given runs, on the
    eval steps that every one of them has."""
    part = evals.filter(pl.col("run_id").is_in(run_ids))
    if part.is_empty():
        return np.array([]), np.empty((0, 0))
    wide = part.pivot(on="run_id", index="step", values="eval_loss").drop_nulls().sort("step")
    cols = [r for r in run_ids if r in wide.columns]
    # Eval after the update of step t means t + 1 steps trained.
    return wide["step"].to_numpy() + 1, wide.select(cols).to_numpy().T


def speedup(members: pl.DataFrame, evals: pl.DataFrame, study: str = "", baseline: str = BASELINE) -> pl.DataFrame:
    """Speedup of every non-baseline main arm over the baseline, per size,
    by both definitions (see module docstring). `evals`: run_id, step,
    eval_loss for the baseline runs (non-null eval points)."""
    rows = []
    params, family = _size_params(members), _size_family(members)
    main_arms = sorted(set(members.filter(pl.col("sweep") == "main")["arm"].to_list()) - {baseline})
    for size in _size_order(members):
        base_group = compared_group(members, size, baseline)
        ladder = baseline_ladder(members, size, baseline)
        ladder_notes = []
        if ladder and any(lr != ladder[0].lr for lr in ladder_lrs(members, size, baseline)):
            ladder_notes = [f"ladder runs not at the baseline's best lr {ladder[0].lr:g} left out "
                            f"(ladder lrs: {', '.join(f'{x:g}' for x in ladder_lrs(members, size, baseline))}); "
                            "set the baseline's lr at this size to its best to use them"]
        for arm in main_arms:
            candidates = _lr_candidates(members, size, arm)
            if not candidates:
                continue  # this arm does not run at this size
            group = best_group(candidates)
            base = {"study": study, "size": size, "arm": arm, "family": family[size],
                    "params_nonembedding": params[size][0], "params_active_nonembedding": params[size][1]}
            # Runs left out of the numbers: of the compared arm group and of the baseline points.
            excl = (_excluded_note(([group] if group else candidates) + ladder) + choice_notes(candidates, group)
                    + ladder_notes)
            if group is None:
                for d in ("ladder", "target"):
                    rows.append(base | {"definition": d, "n_seeds": 0,
                                        "note": "; ".join(excl + ["no completed runs of this arm"])})
                continue
            base |= {"n_seeds": len(group.losses), "steps": group.steps,
                     "arm_loss": group.mean, "arm_lr": group.lr,
                     **loss_gap(base_group, group)}
            rows.append(base | _ladder_row(group, ladder, excl))
            rows.append(base | _target_row(group, ladder, evals, excl))
    return _frame(rows, SPEEDUP_SCHEMA)


def loss_gap(base: Group | None, arm: Group) -> dict:
    """Baseline minus arm final eval loss at the same length, each at its best
    lr (positive: the arm is better), with a percentile-bootstrap interval
    over both groups' seeds (resampled independently; none with one seed on
    either side). Defined even where the speedup is only a bound."""
    if base is None or not len(base.losses) or base.steps != arm.steps:
        return {}
    out = {"baseline_loss": base.mean, "loss_gap": base.mean - arm.mean}
    if len(base.losses) < 2 or len(arm.losses) < 2:
        return out
    low, high = percentile_ci((base.losses, arm.losses), lambda b, a, axis=-1: b.mean(axis=axis) - a.mean(axis=axis))
    return out | {"loss_gap_ci_low": low, "loss_gap_ci_high": high}


def _estimate_row(definition: str, est: Estimate, notes: list[str], **extra) -> dict:
    return {
        "definition": definition, "speedup": est.speedup, "t_star": est.t_star,
        "bound": est.bound, "bound_value": est.bound_value,
        "ci_low": est.ci_low, "ci_high": est.ci_high, "saved": est.saved(est.speedup),
        "saved_ci_low": est.saved(est.ci_low), "saved_ci_high": est.saved(est.ci_high),
        "note": "; ".join(notes + est.notes) or None, **extra,
    }


def _ladder_row(arm: Group, ladder: list[Group], notes: list[str]) -> dict:
    if len(ladder) < 2:
        return {"definition": "ladder", "baseline_lengths": len(ladder),
                "note": "; ".join(notes + [f"ladder needs baseline runs at >= 2 lengths at the baseline's best lr; have {len(ladder)}"])}
    lengths = np.array([g.steps for g in ladder], float)
    est = estimate_speedup(
        [arm.losses] + [g.losses for g in ladder],
        lambda m: ladder_t_star(lengths, np.stack(m[1:], axis=1), m[0]),
        arm.steps, (lengths[0], lengths[-1]),
    )
    at_t = [g for g in ladder if g.steps == arm.steps]
    return _estimate_row("ladder", est, notes, baseline_lengths=len(ladder),
                         baseline_seeds=min(len(g.losses) for g in ladder),
                         baseline_lr=at_t[0].lr if at_t else None)


def _target_row(arm: Group, ladder: list[Group], evals: pl.DataFrame, notes: list[str]) -> dict:
    if not ladder:
        return {"definition": "target", "note": "; ".join(notes + ["no completed baseline run at this size"])}
    longest = ladder[-1]
    steps, curves = _eval_curves(evals, longest.run_ids)
    if len(steps) == 0:
        return {"definition": "target", "note": "; ".join(notes + ["the longest baseline run has no eval points"])}
    est = estimate_speedup(
        [arm.losses, curves],
        lambda m: target_t_star(steps, m[1], m[0]),
        arm.steps, (steps[0], steps[-1]),
    )
    extra = [] if longest.steps == arm.steps else [f"baseline eval curve from its {longest.steps}-step run"]
    return _estimate_row("target", est, notes + extra, baseline_lengths=1,
                         baseline_seeds=curves.shape[0], baseline_lr=longest.lr)


def transfer(speedups: pl.DataFrame) -> pl.DataFrame:
    """Speedup against model size per arm and definition: the question
    "tuned small, does it still win large?"."""
    return speedups.select(list(TRANSFER_SCHEMA)).sort(
        ["arm", "definition", "family", "params_nonembedding", "size"], nulls_last=True
    )


# ---------------------------------------------------------------- summaries
def _group_stats(g: Group) -> dict:
    n = len(g.losses)
    return {
        "mean_loss": g.mean if n else None,
        "std_loss": float(g.losses.std(ddof=1)) if n >= 2 else None,
        "n": n, "n_excluded": g.n_excluded,
    }


def final_losses(members: pl.DataFrame, study: str = "") -> pl.DataFrame:
    """Final eval loss per (size, arm) of the main runs: mean, std, n."""
    params = _size_params(members)
    rows = []
    for g in _groups(members.filter(pl.col("sweep") == "main")):
        rows.append({
            "study": study, "size": g.size, "arm": g.arm, "lr": g.lr, "steps": g.steps,
            **_group_stats(g),
            "min_loss": float(g.losses.min()) if len(g.losses) else None,
            "max_loss": float(g.losses.max()) if len(g.losses) else None,
            "params_nonembedding": params[g.size][0],
        })
    order = {s: i for i, s in enumerate(_size_order(members))}
    return _frame(rows, FINAL_LOSSES_SCHEMA).sort(
        pl.col("size").replace_strict(order, default=len(order)), "arm", "lr")


def lr_sweep(members: pl.DataFrame, study: str = "") -> pl.DataFrame:
    """Final loss against base lr per (size, arm) wherever an lr sweep ran;
    the main runs join as the sweep's factor-1 point. `is_best` marks the
    lr the speedup comparison uses."""
    rows = []
    swept = members.filter(pl.col("sweep") == "lr").select("size", "arm").unique()
    for size, arm in swept.sort(["size", "arm"]).iter_rows():
        steps = _main_steps(members, size, arm)
        cand = members.filter(
            (pl.col("size") == size) & (pl.col("arm") == arm) & pl.col("sweep").is_in(_LR_SWEEPS)
            & ((pl.col("steps") == steps) if steps is not None else pl.lit(True))
        )
        groups = _groups(cand)
        best = best_group(groups)
        main_lr = cand.filter(pl.col("sweep") == "main")["lr"].drop_nulls()
        for g in groups:
            if g.lr is None:  # planned runs not ingested yet
                continue
            tagged = cand.filter((pl.col("lr") == g.lr))["lr_factor"].drop_nulls()
            factor = float(tagged[0]) if len(tagged) else (g.lr / float(main_lr[0]) if len(main_lr) else None)
            rows.append({
                "study": study, "size": size, "arm": arm, "lr": g.lr, "lr_factor": factor,
                "steps": g.steps, **_group_stats(g), "n_diverged": g.n_diverged,
                "is_best": g is best, "run_ids": ",".join(g.run_ids),
            })
    return _frame(rows, LR_SWEEP_SCHEMA)


def _reference_arm(tag_base: str | None, arm: str, main_arms: set[str], baseline: str) -> str | None:
    """The arm a derived run (U-sweep, removal) was made from: its `base` tag,
    else its own arm name when that is a main arm, else the only non-baseline
    main arm. None when ambiguous."""
    if tag_base:
        return tag_base
    if arm in main_arms and arm != baseline:
        return arm
    others = sorted(main_arms - {baseline})
    return others[0] if len(others) == 1 else None


def _matching_reference(members: pl.DataFrame, size: str, arm: str, lr: float, steps: int) -> Group | None:
    """The reference arm's group at the same size, lr and length (main or lr
    sweep): any other lr or length would confound the comparison."""
    cand = members.filter(
        (pl.col("size") == size) & (pl.col("arm") == arm) & pl.col("sweep").is_in(_LR_SWEEPS)
        & (pl.col("lr") == lr) & (pl.col("steps") == steps)
    )
    groups = _groups(cand)
    return groups[0] if groups else None


def usweep(members: pl.DataFrame, study: str = "", baseline: str = BASELINE) -> pl.DataFrame:
    """U-plot points: final loss per (size, component, start|end, factor),
    with the unscaled base arm at the same lr and length as factor 1."""
    # A U-sweep point needs its tags; a hand-made plan row without them is skipped, not guessed.
    sw = members.filter((pl.col("sweep") == "usweep") & pl.all_horizontal(
        pl.col("component", "which", "factor").is_not_null()))
    if sw.is_empty():
        return _frame([], USWEEP_SCHEMA)
    main_arms = set(members.filter(pl.col("sweep") == "main")["arm"].to_list())
    sw = sw.with_columns(
        pl.struct("base", "arm").map_elements(
            lambda r: _reference_arm(r["base"], r["arm"], main_arms, baseline), return_dtype=pl.Utf8
        ).alias("base_arm")
    )
    params = _size_params(members)
    rows = []
    keys = ["size", "base_arm", "component", "which"]
    for (size, base_arm, comp, which), part in sw.group_by(keys, maintain_order=True):
        points = []
        for factor, fpart in part.group_by("factor", maintain_order=True):
            points.append((float(factor[0]), _merge_groups(_groups(fpart))))
        lrs, steps = part["lr"].drop_nulls().unique(), part["steps"].drop_nulls().unique()
        if base_arm and len(lrs) == 1 and len(steps) == 1 and not any(f == 1.0 for f, _ in points):
            ref = _matching_reference(members, size, base_arm, float(lrs[0]), int(steps[0]))
            if ref is not None:
                points.append((1.0, ref))
        best = best_group([g for _, g in sorted(points, key=lambda p: p[0])])  # the lr rule, over factors
        for f, g in sorted(points, key=lambda p: p[0]):
            rows.append({
                "study": study, "size": size, "base_arm": base_arm, "component": comp, "which": which,
                "factor": f, **_group_stats(g), "is_best": g is best,
                "params_nonembedding": params[size][0], "run_ids": ",".join(g.run_ids),
            })
    order = {s: i for i, s in enumerate(_size_order(members))}
    return _frame(rows, USWEEP_SCHEMA).sort(
        "component", "which", pl.col("size").replace_strict(order, default=len(order)), "factor")


def _merge_groups(groups: list[Group]) -> Group:
    """Pool the seeds of one sweep point into one group. A point is one
    (lr, length) group in any sane study; pooling keeps every run counted
    even if a study varies something else along with the factor."""
    losses = np.concatenate([g.losses for g in groups]) if groups else np.array([])
    first = groups[0]
    return Group(first.size, first.arm, first.lr, first.steps, losses,
                 [r for g in groups for r in g.run_ids], [s for g in groups for s in g.seeds],
                 {rid: st for g in groups for rid, st in g.excluded.items()})


def _family_lines(sizes: list[str], order: dict[str, int], family: dict[str, str]) -> list[list[str]]:
    """`sizes` split by model family, each list smallest first."""
    ordered = sorted(sizes, key=lambda s: order.get(s, len(order)))
    return [[s for s in ordered if family.get(s) == fam] for fam in dict.fromkeys(family.get(s) for s in ordered)]


def regret(lr_frame: pl.DataFrame, u_frame: pl.DataFrame, members: pl.DataFrame, study: str = "") -> pl.DataFrame:
    """Transfer regret of every swept parameter: at each larger size, the loss
    at the factor that was best at the smallest swept size minus the best
    loss at that size (0 = the small-scale choice is still optimal). Within a
    model family only: a MoE size is referred to the smallest MoE size, a
    dense size to the smallest dense size."""
    order = {s: i for i, s in enumerate(_size_order(members))}
    family = _size_family(members)
    curves = []  # (parameter, kind, frame with size, factor, mean_loss, eligible)
    if not lr_frame.is_empty():
        for (arm,), part in lr_frame.group_by(["arm"], maintain_order=True):
            curves.append((f"lr ({arm})", "lr", part.rename({"lr_factor": "factor"})))
    if not u_frame.is_empty():
        for (base, comp, which), part in u_frame.group_by(["base_arm", "component", "which"], maintain_order=True):
            curves.append((f"{comp}.{which} ({base})", "usweep", part))
    rows = []
    for parameter, kind, part, sizes in [
        (parameter, kind, part, line) for parameter, kind, part in curves
        for line in _family_lines(part["size"].unique().to_list(), order, family)
    ]:
        best = {r["size"]: r for r in part.filter(pl.col("is_best")).iter_rows(named=True)}
        if len(sizes) < 2 or sizes[0] not in best:
            continue
        ref = sizes[0]
        chosen = best[ref]["factor"]
        for size in sizes[1:]:
            row = {"study": study, "parameter": parameter, "kind": kind, "size": size,
                   "reference_size": ref, "chosen_factor": chosen}
            if size not in best:
                rows.append(row | {"note": "no eligible point at this size"})
                continue
            at = part.filter((pl.col("size") == size) & (pl.col("factor") - chosen).abs().lt(1e-9 * abs(chosen)))
            row |= {"best_factor": best[size]["factor"], "best_loss": best[size]["mean_loss"]}
            if at.is_empty() or at["mean_loss"][0] is None:
                rows.append(row | {"note": f"factor {chosen:g} not run (or not completed) at this size"})
                continue
            loss = float(at["mean_loss"][0])
            rows.append(row | {"loss_at_chosen": loss, "regret": loss - best[size]["mean_loss"]})
    return _frame(rows, REGRET_SCHEMA)


def ablation(members: pl.DataFrame, study: str = "", baseline: str = BASELINE) -> pl.DataFrame:
    """Per component: removal = loss(RLRS with the component reset to (1, 1))
    - loss(RLRS), positive when the component's schedule helps; contribution
    = loss(baseline + only this component's RLRS values) - loss(baseline),
    negative when it helps. References are matched on size, lr and length."""
    main_arms = set(members.filter(pl.col("sweep") == "main")["arm"].to_list())
    rows = []
    for kind in ("removal", "contribution"):
        part = members.filter((pl.col("sweep") == kind) & pl.col("component").is_not_null())
        for (size, comp), cpart in part.group_by(["size", "component"], maintain_order=True):
            g = _merge_groups(_groups(cpart))
            first = cpart.row(0, named=True)
            ref_arm = (baseline if kind == "contribution"
                       else _reference_arm(first["base"], first["arm"], main_arms, baseline))
            row = {"study": study, "size": size, "kind": kind, "component": comp, "reference_arm": ref_arm,
                   "n": len(g.losses), "n_excluded": g.n_excluded}
            notes = _excluded_note([g])
            lrs, steps = cpart["lr"].drop_nulls().unique(), cpart["steps"].drop_nulls().unique()
            ref = None
            if ref_arm and len(lrs) == 1 and len(steps) == 1:
                ref = _matching_reference(members, size, ref_arm, float(lrs[0]), int(steps[0]))
            if ref is None or not len(ref.losses):
                notes.append("no completed reference run at the same size, lr and length")
            else:
                notes += [f"reference: {x}" for x in _excluded_note([ref])]
                row |= {"reference_loss": ref.mean, "n_reference": len(ref.losses)}
            if len(g.losses):
                row["loss"] = g.mean
                if ref is not None and len(ref.losses):
                    row["delta"] = g.mean - ref.mean
            rows.append(row | {"note": "; ".join(notes) or None})
    order = {s: i for i, s in enumerate(_size_order(members))}
    return _frame(rows, ABLATION_SCHEMA).sort(
        "kind", pl.col("size").replace_strict(order, default=len(order)), "component")


# ---------------------------------------------------------------- curves
def compared_runs(members: pl.DataFrame, study: str = "", baseline: str = BASELINE) -> pl.DataFrame:
    """Which runs each size's comparison used: every arm at its compared lr
    (role `arm`), the baseline at the main length (`baseline`) and the
    baseline's longest run whose eval curve the target definition reads
    (`baseline_longest`, when longer)."""
    rows = []
    main_arms = sorted(set(members.filter(pl.col("sweep") == "main")["arm"].to_list()))
    for size in _size_order(members):
        base_group = compared_group(members, size, baseline)
        ladder = baseline_ladder(members, size, baseline)
        picked: list[tuple[str, str, Group]] = []
        for arm in main_arms:
            g = compared_group(members, size, arm)
            if g is not None:
                picked.append((arm, "baseline" if arm == baseline else "arm", g))
        main_len = _main_steps(members, size, baseline)
        if ladder and ladder[-1].steps != main_len:
            picked.append((baseline, "baseline_longest", ladder[-1]))
        for arm, role, g in picked:
            for rid, seed in zip(g.run_ids, g.seeds):
                rows.append({"study": study, "size": size, "arm": arm, "role": role,
                             "run_id": rid, "lr": g.lr, "steps": g.steps, "seed": seed})
    return _frame(rows, COMPARED_SCHEMA)


def points_per_series(n_series: int) -> int:
    """Downsampling so that n_series curves together stay within ROW_BUDGET."""
    if n_series <= 0:
        return MAX_POINTS_PER_SERIES
    return max(MIN_POINTS_PER_SERIES, min(MAX_POINTS_PER_SERIES, ROW_BUDGET // n_series))


def _metric_columns(con: duckdb.DuckDBPyConnection, prefix: str) -> list[str]:
    cols = [r[0] for r in con.execute("DESCRIBE metrics").fetchall()]
    return [c for c in cols if c.startswith(prefix)]


def _binned(con, runs: pl.DataFrame, series: list[str], values: list[str], points: int, where: str = "") -> pl.DataFrame:
    """Mean of metric `values` per series and step bin: each series' steps
    are cut into `points` equal bins, averaging over the bin and its seeds.
    The step reported is the bin's last step trained (step + 1)."""
    keys = ", ".join(series)
    vals = ", ".join(f"avg(m.{v}) AS {v}" for v in values)
    con.register("_runs", runs)
    try:
        return con.sql(f"""
            WITH m AS (
                SELECT r.*, m.step, {", ".join(f"m.{v}" for v in values)}
                FROM metrics m JOIN _runs r USING (run_id) {where}
            ), w AS (
                SELECT {keys}, greatest(1, ceil((max(step) + 1) / {points}))::BIGINT AS stride
                FROM m GROUP BY {keys}
            )
            SELECT {", ".join(f"m.{k}" for k in series)}, (max(m.step) + 1)::BIGINT AS step,
                   {vals}, count(DISTINCT m.run_id)::BIGINT AS n_runs,
                   string_agg(DISTINCT m.run_id, ',' ORDER BY m.run_id) AS run_ids
            FROM m JOIN w USING ({keys})
            GROUP BY {", ".join(f"m.{k}" for k in series)}, m.step // w.stride
            ORDER BY {", ".join(f"m.{k}" for k in series)}, step
        """).pl()
    finally:
        con.unregister("_runs")


def loss_curves(con: duckdb.DuckDBPyConnection, compared: pl.DataFrame, study: str = "") -> pl.DataFrame:
    """Train loss (binned means) and eval loss (means over seeds at the
    eval steps) of the compared runs, per size and arm."""
    if compared.is_empty():
        return _frame([], CURVE_SCHEMA)
    runs = compared.with_columns(
        pl.when(pl.col("role") == "baseline_longest")
        .then(pl.format("{} ({} steps)", pl.col("arm"), pl.col("steps")))
        .otherwise(pl.format("{} (lr {})", pl.col("arm"), pl.col("lr").map_elements(lambda x: f"{x:g}", return_dtype=pl.Utf8)))
        .alias("label")
    ).select("size", "arm", "role", "label", "run_id")
    series = ["size", "arm", "role", "label"]
    n_series = runs.select(series).unique().height
    train = _binned(con, runs, series, ["train_loss"], points_per_series(2 * n_series))
    evals = _binned(con, runs, series, ["eval_loss"], points_per_series(2 * n_series), "WHERE m.eval_loss IS NOT NULL")
    out = pl.concat([train.with_columns(pl.lit(None, pl.Float64).alias("eval_loss")),
                     evals.with_columns(pl.lit(None, pl.Float64).alias("train_loss"))], how="diagonal")
    return out.with_columns(pl.lit(study).alias("study")).select(list(CURVE_SCHEMA)).cast(CURVE_SCHEMA)


def update_sizes(con: duckdb.DuckDBPyConnection, members: pl.DataFrame, study: str = "") -> pl.DataFrame:
    """Relative update size ||dW||/||W|| per component over training, mean
    over the main runs' seeds per (size, arm): the paper's Figure 1."""
    cols = _metric_columns(con, "update_")
    runs = _completed(members.filter(pl.col("sweep") == "main")).select("size", "arm", "run_id").unique()
    if not cols or runs.is_empty():
        return _frame([], UPDATE_SCHEMA)
    # Long format first, so a component missing from a model (ffn in an MoE)
    # just has no rows instead of a null column; binned in DuckDB, so only
    # the plotted points reach Python (every step of every main run would not).
    n_series = runs.select("size", "arm").unique().height * len(cols)
    points = points_per_series(n_series)
    con.register("_upd_runs", runs)
    try:
        out = con.sql(f"""
            WITH long AS (
                SELECT r.size, r.arm, m.run_id, m.step, u.component, u.value
                FROM metrics m JOIN _upd_runs r USING (run_id),
                LATERAL (SELECT * FROM (VALUES {", ".join(f"('{c[7:]}', m.{c})" for c in cols)}) t(component, value)) u
                WHERE u.value IS NOT NULL
            ), w AS (
                SELECT size, arm, component, greatest(1, ceil((max(step) + 1) / {points}))::BIGINT AS stride
                FROM long GROUP BY size, arm, component
            )
            SELECT l.size, l.arm, l.component, (max(l.step) + 1)::BIGINT AS step, avg(l.value) AS "update",
                   count(DISTINCT l.run_id)::BIGINT AS n_runs
            FROM long l JOIN w USING (size, arm, component)
            GROUP BY l.size, l.arm, l.component, l.step // w.stride
            ORDER BY l.size, l.arm, l.component, step
        """).pl()
    finally:
        con.unregister("_upd_runs")
    if out.is_empty():
        return _frame([], UPDATE_SCHEMA)
    return out.with_columns(pl.lit(study).alias("study")).select(list(UPDATE_SCHEMA)).cast(UPDATE_SCHEMA)


def lr_schedules(con: duckdb.DuckDBPyConnection, members: pl.DataFrame, study: str = "") -> pl.DataFrame:
    """lr_<component>(t) as the trainer applied it: one completed main run
    per arm (first seed) at the smallest size of each model family (dense,
    MoE), since a study may give each family its own multiplier table."""
    cols = _metric_columns(con, "lr_")
    main = _completed(members.filter(pl.col("sweep") == "main"))
    if not cols or main.is_empty():
        return _frame([], SCHEDULE_SCHEMA)
    order = _size_order(main)
    sizes = []
    for _, family in main.group_by("moe"):
        arms = set(family["arm"])
        in_family = [s for s in order if s in set(family["size"])]
        # The smallest size where every arm of the family ran, else its smallest.
        sizes.append(next((s for s in in_family if set(family.filter(pl.col("size") == s)["arm"]) == arms), in_family[0]))
    picks = (main.filter(pl.col("size").is_in(sizes)).sort("size", "arm", "seed", "run_id")
             .unique(subset=["size", "arm"], keep="first").select("size", "arm", "run_id"))
    n_series = picks.height * len(cols)
    wide = _binned(con, picks, ["size", "arm", "run_id"], cols, points_per_series(n_series))
    long = wide.unpivot(index=["size", "arm", "run_id", "step"], on=cols, variable_name="component", value_name="lr")
    long = long.drop_nulls("lr").with_columns(pl.col("component").str.slice(3), pl.lit(study).alias("study"))
    return long.select(list(SCHEDULE_SCHEMA)).cast(SCHEDULE_SCHEMA).sort("size", "arm", "component", "step")


# ---------------------------------------------------------------- tables for the report
def sizes_table(con: duckdb.DuckDBPyConnection, study: str) -> pl.DataFrame:
    """Model shape and parameter counts per size (any completed run of it)."""
    return con.sql("""
        SELECT size, any_value(d_model) AS d_model, any_value(n_layers) AS n_layers,
               bool_or(moe) AS moe, any_value(n_experts) AS n_experts, any_value(top_k) AS top_k,
               any_value(granularity) AS granularity,
               max(params_total) AS params_total, max(params_active) AS params_active,
               max(params_nonembedding) AS params_nonembedding,
               max(params_active_nonembedding) AS params_active_nonembedding
        FROM runs WHERE study = $study AND params_total IS NOT NULL
        GROUP BY size ORDER BY params_nonembedding, size
    """, params={"study": study}).pl()


def arm_multipliers(con: duckdb.DuckDBPyConnection, members: pl.DataFrame) -> pl.DataFrame:
    """arm, component, start, end: the multipliers each main arm ran with."""
    main = members.filter(pl.col("sweep") == "main").sort("arm", "size", "run_id").unique(subset="arm", keep="first")
    rows = []
    for arm, rid in main.select("arm", "run_id").iter_rows():
        got = con.execute("SELECT CAST(multipliers AS VARCHAR) FROM runs WHERE run_id = ?", [rid]).fetchall()
        for comp, m in (json.loads(got[0][0]) if got and got[0][0] else {}).items():
            rows.append({"arm": arm, "component": comp, "start": float(m["start"]), "end": float(m["end"])})
    return _frame(rows, {"arm": S, "component": S, "start": F, "end": F})


def problem_runs(con: duckdb.DuckDBPyConnection, members: pl.DataFrame) -> pl.DataFrame:
    """Every run that did not complete (failed, diverged, or planned and
    missing), with its sweeps and error: listed, never hidden."""
    bad = members.filter(pl.col("status") != "completed")
    return (
        bad.group_by("run_id", maintain_order=True)
        .agg(pl.col("size").first(), pl.col("arm").first(), pl.col("status").first(),
             pl.col("seed").first(), pl.col("lr").first(), pl.col("steps").first(),
             pl.col("sweep").unique().sort().str.join(",").alias("sweeps"), pl.col("error").first())
        .sort("status", "size", "arm", "run_id")
    )


def provenance(con: duckdb.DuckDBPyConnection, study: str) -> dict[str, pl.DataFrame]:
    """Where the numbers came from: study file, commits, versions, executors, corpus."""
    out = {}
    if _has_table(con, "studies"):
        out["study"] = con.sql(
            "SELECT name, file, sha256 FROM studies WHERE name = $study", params={"study": study}).pl()
    out["commits"] = con.sql(
        "SELECT git_commit, count(*) AS runs FROM runs WHERE study = $study GROUP BY 1 ORDER BY 2 DESC", params={"study": study}).pl()
    out["versions"] = con.sql(
        "SELECT CAST(versions AS VARCHAR) AS versions, count(*) AS runs FROM runs WHERE study = $study GROUP BY 1 ORDER BY 2 DESC",
        params={"study": study}).pl()
    out["executors"] = con.sql(
        "SELECT executor, host, count(*) AS runs, round(sum(wall_time_s) / 3600, 3) AS wall_hours "
        "FROM runs WHERE study = $study GROUP BY 1, 2 ORDER BY 3 DESC", params={"study": study}).pl()
    out["corpus"] = con.sql(
        "SELECT json_extract_string(config, '$.data.corpus') AS corpus, "
        "json_extract_string(config, '$.data.tokenizer') AS tokenizer, count(*) AS runs "
        "FROM runs WHERE study = $study GROUP BY 1, 2 ORDER BY 3 DESC", params={"study": study}).pl()
    return out


# ---------------------------------------------------------------- tuning (rlrs.tune)
def tune_progress(con: duckdb.DuckDBPyConnection, study: str) -> pl.DataFrame:
    """Every candidate of the study's searches in search order, with the best
    score so far and the runs spent: the search's progress curve."""
    if not _has_table(con, "tune_trajectory"):
        return _frame([], TUNE_PROGRESS_SCHEMA)
    cols = ", ".join(f'"{c}"' for c in TUNE_PROGRESS_SCHEMA)
    return con.sql(f"SELECT {cols} FROM tune_trajectory WHERE study = $study ORDER BY size, arm, step",
                   params={"study": study}).pl().cast(TUNE_PROGRESS_SCHEMA)


def tuned_settings(con: duckdb.DuckDBPyConnection, study: str) -> pl.DataFrame:
    """The searches' final settings beside the paper's tuned values (spec
    section 3; multipliers per family, globals of its MoE config)."""
    from rlrs.tune import PAPER_GLOBALS, PAPER_MULTIPLIERS

    if not _has_table(con, "tuned"):
        return _frame([], TUNED_SCHEMA)
    rows = con.sql("SELECT * FROM tuned WHERE study = $study ORDER BY size, arm", params={"study": study}).pl()
    out = []
    for r in rows.iter_rows(named=True):
        if "." in r["parameter"]:
            comp, which = r["parameter"].split(".")
            paper = PAPER_MULTIPLIERS.get(r["family"], {}).get(comp, {}).get(which)
        else:
            paper = PAPER_GLOBALS.get(r["family"], {}).get(r["parameter"])
        out.append({**r, "paper_value": paper})
    return _frame(out, TUNED_SCHEMA)


# ---------------------------------------------------------------- everything at once
def baseline_evals(con: duckdb.DuckDBPyConnection, members: pl.DataFrame, baseline: str = BASELINE) -> pl.DataFrame:
    """Eval points (run_id, step, eval_loss) of the completed baseline runs."""
    ids = _completed(members.filter(pl.col("arm") == baseline)).select("run_id").unique()
    con.register("_eval_ids", ids)
    try:
        return con.sql(
            "SELECT run_id, step, eval_loss FROM metrics JOIN _eval_ids USING (run_id) "
            "WHERE eval_loss IS NOT NULL ORDER BY run_id, step").pl()
    finally:
        con.unregister("_eval_ids")


def study_parts(con: duckdb.DuckDBPyConnection, study: str) -> set[str]:
    """The optional parts the study file has (today: 'tune' for a tune block)."""
    if not _has_table(con, "studies"):
        return set()
    got = con.execute("SELECT json_extract(config, '$.tune') IS NOT NULL FROM studies WHERE name = ?", [study]).fetchall()
    return {"tune"} if got and got[0][0] else set()


def baseline_arm(con: duckdb.DuckDBPyConnection, study: str) -> str:
    """The study's baseline: the arm its ladder runs (or its contribution
    sweep adds into), as the study file says; `baseline` by default."""
    if _has_table(con, "studies"):
        got = con.execute(
            "SELECT coalesce(json_extract_string(config, '$.sweeps.ladder.arm'), "
            "json_extract_string(config, '$.sweeps.contribution.into')) FROM studies WHERE name = ?", [study]
        ).fetchall()
        if got and got[0][0]:
            return got[0][0]
    return BASELINE


def compute(con: duckdb.DuckDBPyConnection, study: str) -> dict[str, pl.DataFrame]:
    """Every analysis frame of one study, keyed by view name."""
    if study not in study_names(con):
        raise ConfigError("study", f"{study!r} is not in this database; allowed: {', '.join(study_names(con)) or '(none)'}")
    members = load_members(con, study)
    base = baseline_arm(con, study)
    sp = speedup(members, baseline_evals(con, members, base), study, base)
    lr = lr_sweep(members, study)
    us = usweep(members, study, base)
    compared = compared_runs(members, study, base)
    return {
        "speedup": sp,
        "final_losses_by_arm": final_losses(members, study),
        "transfer": transfer(sp),
        "lr_sweep": lr,
        "usweep": us,
        "regret": regret(lr, us, members, study),
        "ablation": ablation(members, study, base),
        "compared_runs": compared,
        "loss_curves": loss_curves(con, compared, study),
        "update_sizes": update_sizes(con, members, study),
        "lr_schedules": lr_schedules(con, members, study),
        "tune_progress": tune_progress(con, study),
        "tuned_settings": tuned_settings(con, study),
    }


_EMPTY = {
    "speedup": SPEEDUP_SCHEMA, "final_losses_by_arm": FINAL_LOSSES_SCHEMA, "transfer": TRANSFER_SCHEMA,
    "lr_sweep": LR_SWEEP_SCHEMA, "usweep": USWEEP_SCHEMA, "regret": REGRET_SCHEMA,
    "ablation": ABLATION_SCHEMA, "compared_runs": COMPARED_SCHEMA, "loss_curves": CURVE_SCHEMA,
    "update_sizes": UPDATE_SCHEMA, "lr_schedules": SCHEDULE_SCHEMA,
    "tune_progress": TUNE_PROGRESS_SCHEMA, "tuned_settings": TUNED_SCHEMA,
}


def materialize(con: duckdb.DuckDBPyConnection) -> dict[str, dict[str, pl.DataFrame]]:
    """Compute every study's frames and store them as tables `analysis_<name>`
    with views `<name>` over them. Runs inside the caller's transaction (rlrs
    collect's ingest): it neither begins nor commits. Returns the frames per
    study."""
    per_study = {s: compute(con, s) for s in study_names(con)}
    for name, schema in _EMPTY.items():
        frame = pl.concat([f[name] for f in per_study.values()]) if per_study else _frame([], schema)
        con.register("_analysis_frame", frame)
        try:
            con.execute(f"CREATE OR REPLACE TABLE analysis_{name} AS SELECT * FROM _analysis_frame")
        finally:
            con.unregister("_analysis_frame")
        con.execute(f"CREATE OR REPLACE VIEW {name} AS SELECT * FROM analysis_{name}")
    # When the views were computed: is_stale() compares it with the last ingest.
    con.execute("CREATE OR REPLACE TABLE analysis_meta AS SELECT now() AS materialized_at")
    return per_study


def is_stale(con: duckdb.DuckDBPyConnection) -> bool:
    """True when the analysis views are missing or older than the newest
    ingested run or collected plan (now() inside the ingest transaction is
    its start, so a hook run by that same ingest counts as fresh)."""
    if not _has_table(con, "analysis_meta"):
        return True
    newest = ("greatest((SELECT max(ingested_at) FROM runs), (SELECT max(collected_at) FROM studies))"
              if _has_table(con, "studies") else "(SELECT max(ingested_at) FROM runs)")
    # Compared in SQL: fetching a TIMESTAMPTZ into Python would need pytz.
    return bool(con.execute(
        f"SELECT coalesce((SELECT max(materialized_at) FROM analysis_meta) < {newest}, false)").fetchall()[0][0])
