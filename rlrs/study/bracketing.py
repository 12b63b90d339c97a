"""Stage 1 of the protocol: choose an lr per (size, arm), bracketing it.

A pure decision function. The workflow runs the first grid on the
selection seeds, calls `select_lr` with what has finished, runs what it
asks for, and calls it again, until it answers 'done'.

The grid is log-spaced around a centre (`log_grid`); when the best point
is at an edge of what has run, the next point beyond that edge (edge lr
times or divided by `factor`) is asked for, at most `max_extra_points`
times; a best point that is still at an edge then marks the cell
unbracketed (the report says so, and health check 2 fails it).

Ranking rules:
- only the selection seeds count, and only those every ranked point has
  (a point with one seed would otherwise compete with its luckiest draw
  against means of several: winner's curse);
- a diverged run counts as +inf loss (pass `math.inf` or nan): an lr that
  diverges on a seed is not a candidate, however well its other seeds did;
- ties (equal means, all-diverged included) go to the lower lr, the more
  stable one; so a grid that diverges everywhere walks down until it
  finds a point that trains, within `max_extra_points`; if none does, the
  cell FAILS (`failed`: no lr to measure at; the study leaves the size out
  of stage 2 and check 2 fails it) rather than waiting for an lr forever;
- a point that ran but has no usable result on any selection seed (every
  run failed, which is not divergence) is left out of the ranking and
  said in the note; the grid still extends beyond it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from rlrs.errors import ConfigError


def lr_key(lr: float) -> float:
    """An lr rounded to 12 significant digits: 0.003 * 0.5 and 0.0015 are one point."""
    return float(f"{lr:.12g}")


def log_grid(centre: float, factor: float, n_below: int = 1, n_above: int = 1) -> list[float]:
    """centre * factor**k for k = -n_below .. n_above, ascending."""
    if not centre > 0:
        raise ConfigError("lr", f"the grid's centre must be > 0, got {centre!r}")
    if not factor > 1:
        raise ConfigError(
            "sweeps.lr.bracket.factor", f"the grid's step factor must be > 1 (e.g. 2 or 1.41), got {factor!r}"
        )
    return [lr_key(centre * factor**k) for k in range(-n_below, n_above + 1)]


def _mean(losses: Mapping[int, float], seeds: set[int]) -> float:
    vals = [losses[s] for s in sorted(seeds)]
    return math.inf if any(math.isnan(v) or v == math.inf for v in vals) else sum(vals) / len(vals)


def select_lr(
    grid: Sequence[float],
    factor: float,
    results: Mapping[float, Mapping[int, float]],
    selection_seeds: Sequence[int],
    max_extra_points: int,
) -> dict:
    """The next step of the lr selection of one (size, arm) cell.

    grid: the first grid's lrs (>= 2). factor: the step beyond an edge.
    results: lr -> (seed -> final eval loss) for every lr that has run
    (inf or nan: diverged; a seed absent: its run did not finish or
    failed). selection_seeds: the seeds lrs are ranked on.
    max_extra_points: how many points beyond the first grid may be added.

    Returns a dict with every key always present:
      action: 'run' (run the lrs in `run` on the selection seeds, then ask
        again) or 'done';
      run: lrs to run next, ascending ([] when done);
      lr: the chosen lr (None while running, or when no point trained);
      bracketed: the chosen lr has a ranked point on each side;
      cap_reached: the best was still at an edge after max_extra_points;
      failed: done without an lr to measure at (every ranked lr diverged,
        or no selection seed finished at every lr);
      n_extra: points run beyond the first grid;
      ranked_on: the seeds the ranking used;
      mean_loss: lr -> mean loss on those seeds (inf: diverged);
      note: '; '-joined reasons, or None.
    """
    if len(grid) < 2:
        raise ConfigError("sweeps.lr", f"the first lr grid needs >= 2 points to bracket, got {len(grid)}")
    if max_extra_points < 0:
        raise ConfigError("sweeps.lr.bracket.max_extra_points", f"must be >= 0, got {max_extra_points!r}")
    grid_lrs = sorted({lr_key(x) for x in grid})
    ran = {
        lr_key(lr): {int(s): float(v) for s, v in r.items() if int(s) in set(selection_seeds)}
        for lr, r in results.items()
    }
    out = {
        "action": "run",
        "run": [],
        "lr": None,
        "bracketed": False,
        "cap_reached": False,
        "failed": False,
        "n_extra": len(set(ran) - set(grid_lrs)),
        "ranked_on": [],
        "mean_loss": {},
        "note": None,
    }
    missing = [lr for lr in grid_lrs if lr not in ran]
    if missing:
        return out | {"run": missing}

    notes = []
    empty = sorted(lr for lr, r in ran.items() if not r)
    if empty:
        notes.append(f"lr {', '.join(f'{x:g}' for x in empty)}: no selection seed finished; left out of the ranking")
    ranked = {lr: r for lr, r in ran.items() if r}
    shared = set.intersection(*(set(r) for r in ranked.values())) if ranked else set()
    if not shared:
        return out | {
            "action": "done",
            "failed": True,
            "note": "; ".join(notes + ["no selection seed finished at every lr: nothing to rank"]),
        }
    if any(set(r) != shared for r in ranked.values()):
        notes.append(f"ranked on the seed(s) every lr has ({', '.join(map(str, sorted(shared)))})")
    means = {lr: _mean(r, shared) for lr, r in sorted(ranked.items())}
    best = min(means, key=lambda lr: (means[lr], lr))  # ties: the lower lr
    lrs = sorted(means)
    interior = lrs[0] < best < lrs[-1]
    out |= {"ranked_on": sorted(shared), "mean_loss": means}
    if interior and means[best] < math.inf:
        return out | {"action": "done", "run": [], "lr": best, "bracketed": True, "note": "; ".join(notes) or None}
    tried = sorted(ran)
    if out["n_extra"] < max_extra_points:
        nxt = lr_key(tried[0] / factor) if best == lrs[0] else lr_key(tried[-1] * factor)
        if means[best] == math.inf:
            notes.append("every lr so far diverged: walking down")
        return out | {"run": [nxt], "note": "; ".join(notes) or None}
    if means[best] == math.inf:
        notes.append(f"every lr diverged, down to {lrs[0]:g} ({out['n_extra']} extra point(s), cap {max_extra_points})")
        return out | {"action": "done", "cap_reached": True, "failed": True, "note": "; ".join(notes)}
    notes.append(
        f"best lr {best:g} still at the {'low' if best == lrs[0] else 'high'} edge after "
        f"{out['n_extra']} extra point(s) (cap {max_extra_points}): unbracketed"
    )
    return out | {"action": "done", "lr": best, "cap_reached": True, "note": "; ".join(notes)}
