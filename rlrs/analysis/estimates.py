"""Seed-paired estimates of the measurement stage (protocol spec, section 2).

Pure functions: plain mappings and arrays in, one plain dict out per
estimate, so the analysis can put them straight into a frame row. Every
estimate records how many observations it rests on (`n_pairs`, `n_arm`,
`n_baseline`), its `method` and its `reference` (what it was compared
with, given by the caller, e.g. "baseline lr 0.003, 400 steps").

Input contract: a cell's results are a mapping seed -> final eval loss of
its completed runs (finite floats; diverged or failed runs are left out by
the caller and said in its notes). Seed s gives both arms the same
initialisation stream and the same batches, so the seed effect is shared
and cancels in a per-seed difference: that is what pairing buys.

- `loss_gap`: baseline - arm at equal steps (positive: the arm is better).
  Point estimate: the mean of the per-seed differences over the seeds both
  arms have. Interval: Student-t on those differences (method 'paired-t').
  Beside it, Welch's unpaired interval on all seeds of each arm
  (Welch-Satterthwaite df, scipy.stats.ttest_ind). No interval below
  MIN_SEEDS pairs (resp. seeds per arm for Welch).
- `ladder_speedup`: T*/T - 1 where the baseline's mean final loss over its
  ladder lengths, interpolated monotonically (the caller's `t_star`
  function, e.g. analysis.ladder_t_star: PCHIP in log steps), reaches the
  arm's mean loss. Never extrapolated: outside the ladder it is a bound.
  Interval: a bootstrap that resamples SEEDS jointly across the arm and
  every ladder length (method 'paired-bootstrap'), see `ladder_speedup`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
N_RESAMPLES = 2000
BOOTSTRAP_SEED = 0
# No interval from fewer seeds (pairs, or seeds per group): 2 seeds give a
# t-interval with 1 df (12.7 SE wide at 95%) and a bootstrap with 3 distinct
# resampled means; neither says anything.
MIN_SEEDS = 3

# A ladder T* function: (lengths [k], mean losses [B, k], levels [B]) -> T* [B],
# +inf where the level is below the curve's last point, -inf above its first.
TStar = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def _check_cell(name: str, cell: Mapping[int, float]) -> dict[int, float]:
    out = {int(s): float(v) for s, v in cell.items()}
    bad = [s for s, v in out.items() if not math.isfinite(v)]
    if bad:
        raise ValueError(f"{name}: non-finite loss at seed(s) {bad}; pass completed runs only")
    return out


def _seeds(seeds) -> str:
    return ", ".join(map(str, sorted(seeds)))


# ---------------------------------------------------------------- loss gap
def loss_gap(
    baseline: Mapping[int, float],
    arm: Mapping[int, float],
    *,
    reference: str = "baseline",
    confidence: float = CONFIDENCE,
) -> dict:
    """Baseline minus arm final loss at equal steps, seed-paired.

    `baseline`, `arm`: seed -> final eval loss. Returns a dict with
    loss_gap (mean of the paired differences; the difference of means when
    no seed is in both), ci_low/ci_high (paired Student-t on the
    differences), se (their standard error), method ('paired-t', or
    'welch' when nothing is paired, 'point' when there is no interval),
    n_pairs, the unpaired welch_gap / welch_ci_low / welch_ci_high /
    welch_df over all seeds of each arm, n_baseline, n_arm, confidence,
    reference and note (None, or '; '-joined reasons).
    """
    base, test = _check_cell("baseline", baseline), _check_cell("arm", arm)
    paired = sorted(set(base) & set(test))
    notes: list[str] = []
    only = sorted(set(base) ^ set(test))
    if only:
        notes.append(f"seed(s) {_seeds(only)} in one arm only: left out of the paired estimate")
    out = {
        "loss_gap": None,
        "ci_low": None,
        "ci_high": None,
        "se": None,
        "method": "point",
        "n_pairs": len(paired),
        "n_baseline": len(base),
        "n_arm": len(test),
        "confidence": confidence,
        "reference": reference,
    } | _welch(list(base.values()), list(test.values()), confidence)

    if paired:
        diff = np.array([base[s] - test[s] for s in paired])
        out["loss_gap"] = float(diff.mean())
        if len(diff) >= MIN_SEEDS:
            se = float(diff.std(ddof=1) / math.sqrt(len(diff)))
            half = float(stats.t.ppf((1 + confidence) / 2, len(diff) - 1)) * se
            out |= {"se": se, "ci_low": out["loss_gap"] - half, "ci_high": out["loss_gap"] + half, "method": "paired-t"}
        else:
            notes.append(f"{len(paired)} paired seed(s) (< {MIN_SEEDS}): no paired interval")
    elif base and test:
        out["loss_gap"] = out["welch_gap"]
        notes.append("no seed in both arms: unpaired difference of means")
        if out["welch_ci_low"] is not None:
            out |= {
                "ci_low": out["welch_ci_low"],
                "ci_high": out["welch_ci_high"],
                "method": "welch",
                "se": out["welch_se"],
            }
    if out["welch_ci_low"] is None and base and test:
        notes.append(
            f"fewer than {MIN_SEEDS} seeds in an arm ({len(base)} baseline, {len(test)} arm): no Welch interval"
        )
    out.pop("welch_se")
    return out | {"note": "; ".join(notes) or None}


def _welch(base: list[float], test: list[float], confidence: float) -> dict:
    """Unpaired difference of means with Welch's t-interval (scipy)."""
    out = {"welch_gap": None, "welch_ci_low": None, "welch_ci_high": None, "welch_df": None, "welch_se": None}
    if not base or not test:
        return out
    out["welch_gap"] = float(np.mean(base) - np.mean(test))
    if min(len(base), len(test)) < MIN_SEEDS:
        return out
    se = math.sqrt(np.var(base, ddof=1) / len(base) + np.var(test, ddof=1) / len(test))
    if se == 0.0:  # no spread on either side: Welch's df is 0/0; the interval is the point
        return out | {"welch_ci_low": out["welch_gap"], "welch_ci_high": out["welch_gap"], "welch_se": 0.0}
    res = stats.ttest_ind(base, test, equal_var=False)
    ci = res.confidence_interval(confidence)
    return out | {
        "welch_ci_low": float(ci.low),
        "welch_ci_high": float(ci.high),
        "welch_df": float(res.df),
        "welch_se": se,
    }


# ---------------------------------------------------------------- ladder speedup
def ladder_speedup(
    arm: Mapping[int, float],
    steps: int,
    ladder: Mapping[int, Mapping[int, float]],
    t_star: TStar,
    *,
    reference: str = "baseline",
    n_resamples: int = N_RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = BOOTSTRAP_SEED,
) -> dict:
    """Ladder speedup T*/T - 1 of an arm run for `steps` steps, with a
    seed-joint percentile bootstrap.

    `arm`: seed -> final loss at `steps`; `ladder`: baseline length ->
    (seed -> final loss), all at the baseline's chosen lr, >= 2 lengths.
    `t_star(lengths, means[B, k], levels[B])` interpolates the baseline's
    mean loss over its lengths and returns T* per row, +-inf outside.

    Point estimate: T* of the arm's mean over the ladder's per-length means.
    Outside the ladder there is no number: `bound` says '> x' (the arm
    beats the longest length: at least x) or '< x' (worse than the
    shortest), with `bound_value` = x.

    The bootstrap is a cluster bootstrap with the seed as the cluster: one
    resample draws as many seed labels as the UNION of the groups' seeds
    holds, with replacement, from that union; every group (the arm, each
    ladder length) averages the drawn labels it has, counted with their
    multiplicity. So a drawn seed moves the arm and every length it ran
    at together, and a seed effect shared by all of them cancels in T*;
    resampling groups independently would add that effect as noise. The
    union (not the seeds common to all groups) keeps every seed the point
    estimate uses, so at the identity resample the statistic is the point
    estimate, and a ladder with fewer seeds than the arm (ladder.seeds
    (>= 3) a subset of the reported seeds (>= 5)) still pairs on the seeds
    it has. A resample in which some group draws none of its seeds has no
    value and is dropped (counted in `n_dropped`). T* of a resample beyond
    the ladder is held just outside its edge so the percentiles stay
    ordered; a CI end landing there is None (a bound, not a number).
    No interval unless every group has >= MIN_SEEDS seeds.

    Returns a dict: speedup, t_star, bound, bound_value, ci_low, ci_high,
    saved (1 - T/T*) with saved_ci_low/high, method ('paired-bootstrap', or
    'point' without an interval), n_pairs (seeds in the arm and every
    length), n_seeds (the arm's), baseline_lengths, baseline_seeds (fewest
    at a length), n_resamples, n_dropped, confidence, reference, note.
    """
    cells = [_check_cell("arm", arm)] + [_check_cell(f"ladder[{t}]", ladder[t]) for t in sorted(ladder)]
    lengths = np.array(sorted(ladder), float)
    notes: list[str] = []
    out = {
        "speedup": None,
        "t_star": None,
        "bound": None,
        "bound_value": None,
        "ci_low": None,
        "ci_high": None,
        "method": "point",
        "n_pairs": len(set.intersection(*(set(c) for c in cells))) if cells[0] else 0,
        "n_seeds": len(cells[0]),
        "baseline_lengths": len(lengths),
        "baseline_seeds": min((len(c) for c in cells[1:]), default=0),
        "n_resamples": None,
        "n_dropped": None,
        "confidence": confidence,
        "reference": reference,
    }
    if len(lengths) < 2 or any(not c for c in cells):
        notes.append(
            f"needs the arm's runs and baseline runs at >= 2 ladder lengths; have {len(lengths)} length(s)"
            + ("" if cells[0] else " and no arm run")
        )
        return _with_saved(out | {"note": "; ".join(notes)})
    lo_edge, hi_edge = lengths[0] / steps - 1.0, lengths[-1] / steps - 1.0

    union = sorted(set().union(*cells))
    # [groups, seeds]: a group's loss at each union seed, and whether it has it.
    has = np.array([[s in c for s in union] for c in cells], float)
    loss = np.array([[c.get(s, 0.0) for s in union] for c in cells])

    def speedups(counts: np.ndarray) -> np.ndarray:
        # counts [B, seeds]: how often each seed was drawn; group means [B, groups].
        with np.errstate(invalid="ignore", divide="ignore"):
            means = (counts @ (loss * has).T) / (counts @ has.T)
        empty = np.isnan(means).any(axis=1)  # some group drew none of its seeds
        means[empty] = 0.0  # a placeholder the interpolation accepts; masked below
        v = np.where(empty, np.nan, t_star(lengths, means[:, 1:], means[:, 0]) / steps - 1.0)
        return np.where(v == np.inf, hi_edge + 1.0, np.where(v == -np.inf, lo_edge - 1.0, v))

    point = float(speedups(np.ones((1, len(union))))[0])
    if lo_edge <= point <= hi_edge:
        out |= {"speedup": point, "t_star": (point + 1.0) * steps}
    elif point > hi_edge:
        out |= {"bound": f"> {hi_edge:.2f}", "bound_value": float(hi_edge)}
        notes.append("arm beats the longest baseline: no extrapolation")
    else:
        out |= {"bound": f"< {lo_edge:.2f}", "bound_value": float(lo_edge)}
        notes.append("arm is worse than the shortest baseline: no extrapolation")

    fewest = min(len(c) for c in cells)
    if fewest < MIN_SEEDS:
        notes.append(f"fewest seeds in a group {fewest} (< {MIN_SEEDS}): no interval")
        return _with_saved(out | {"note": "; ".join(notes)})

    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(union), size=(n_resamples, len(union)))
    counts = np.zeros((n_resamples, len(union)))
    np.add.at(counts, (np.arange(n_resamples)[:, None], draws), 1.0)
    values = speedups(counts)
    kept = values[~np.isnan(values)]
    out |= {"method": "paired-bootstrap", "n_resamples": n_resamples, "n_dropped": int(n_resamples - len(kept))}
    if out["n_dropped"]:
        notes.append(f"{out['n_dropped']} of {n_resamples} resamples dropped: a group drew none of its seeds")
    low, high = (float(q) for q in np.quantile(kept, [(1 - confidence) / 2, (1 + confidence) / 2]))
    if not lo_edge <= low <= hi_edge:
        notes.append(f"lower CI end outside the ladder ({'< %.2f' % lo_edge if low < lo_edge else '> %.2f' % hi_edge})")
        low = None
    if not lo_edge <= high <= hi_edge:
        notes.append(
            f"upper CI end outside the ladder ({'> %.2f' % hi_edge if high > hi_edge else '< %.2f' % lo_edge})"
        )
        high = None
    return _with_saved(out | {"ci_low": low, "ci_high": high, "note": "; ".join(notes) or None})


def _saved(value: float | None) -> float | None:
    # saved = 1 - T/T* = 1 - 1/(1 + speedup): monotone, so CI ends map to CI ends.
    return None if value is None else 1.0 - 1.0 / (1.0 + value)


def _with_saved(row: dict) -> dict:
    return row | {
        "saved": _saved(row["speedup"]),
        "saved_ci_low": _saved(row["ci_low"]),
        "saved_ci_high": _saved(row["ci_high"]),
    }
