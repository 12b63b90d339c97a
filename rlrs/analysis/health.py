"""Study health: the eight checks of the protocol (spec section 3).

Pure functions over run-level results; each returns rows of the `health`
view: check_name, scope, family, size, arm, status ('pass' | 'warn' |
'fail'), value, threshold, message (one line that says why). `scope` is
the level a row speaks for: 'arm' (one (size, arm) cell; family, size and
arm set), 'size' (arm null), 'family' (size and arm null) or 'study'
(all null). Thresholds are the settings of SETTINGS (one table, defaults
documented there); a study overrides them by name (`settings()`).

Check 5 (the plateau) is rlrs.analysis.plateau; the checks run together,
on a study's database, in rlrs.analysis.health_view (the `health` view).
Which check decides what, and what each should say on the committed
study-cpu v1 runs: docs/protocol.md.

Input contracts (polars frames; extra columns are ignored):

RUNS: one row per completed run that the measurement compares:
  run_id, size, family ('dense' | 'moe'), arm, seed, steps, lr,
  final_eval_loss, params_active_nonembedding, tokens (steps * batch *
  seq_len), dropped_frac_last (MoE: mean dropped-token fraction over the
  last 10% of steps; null for dense), sweep: 'main' for every arm's runs
  at its chosen lr and main length (the compared cell; the baseline's
  included), 'ladder' for the baseline's runs at its other lengths (at its
  chosen lr). Rows of other sweeps are ignored. Optional: parametrization
  ('sp' | 'mup', default 'sp'): checks 1 and 6 compare sizes within one
  parametrization.
CURVES: run_id, step, eval_loss: the eval points of those runs; `step` is
  the 0-based index of the step after which the eval ran (steps trained =
  step + 1, as in the metrics table). Sparse curves are read linearly
  between their points, never beyond them.
LR_CHOICES: size, family, arm, lr, bracketed (bool), cap_reached (bool),
  optional n_points (1: no sweep), failed (bool: no lr trained) and note
  (the selection's reasons): the stage-1 decisions
  (rlrs.study.bracketing.select_lr), one per compared or failed cell.
SPEEDUPS: size, family, arm, speedup, bound: the ladder speedup rows
  (rlrs.analysis.estimates.ladder_speedup), one per non-baseline compared cell.
SCALING: size, family, arm, lr: one row per completed run of the scaling
  sweep (check 2's scaling_lr judges each (size, arm) cell's lr against
  the LR_CHOICES row of that cell).

What a row qualifies is its check's `qualifies` (keys of QUALIFIES): the
speedup and the loss gap (`blocking_failures`, `with_blocking`: a failure
blocks them), and the numbers that rest on a cell's other runs, the sweeps'
points and the scaling fits (`named_checks`, `with_checks`: the failed and
the warned checks, named beside the number).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import polars as pl

from rlrs.analysis.estimates import MIN_SEEDS
from rlrs.errors import ConfigError

PASS, WARN, FAIL = "pass", "warn", "fail"
HEALTH_SCHEMA = {
    "check_name": pl.Utf8,
    "scope": pl.Utf8,
    "family": pl.Utf8,
    "size": pl.Utf8,
    "arm": pl.Utf8,
    "status": pl.Utf8,
    "value": pl.Float64,
    "threshold": pl.Float64,
    "message": pl.Utf8,
}


@dataclass(frozen=True)
class Setting:
    name: str
    default: float
    doc: str


SETTINGS = (
    Setting(
        "noise_z",
        2.0,
        "checks 1, 6: a difference of means within noise_z standard errors (Welch, over seeds) is within seed noise",
    ),
    Setting(
        "plateau_min_drop",
        0.01,
        "check 5 (spec test, where a run has eval points at <= 5% and at 20-30% of training): the loss at ~25% "
        "must be at least this many nats below the loss at the last eval point by 5%",
    ),
    Setting(
        "plateau_margin",
        0.05,
        "check 5 (never left, where runs have eval points at 5-10% of training): a run whose final loss is not "
        "at least this many nats below its size's plateau level (the median over that size's compared runs, "
        "every arm, of their mean eval loss at 5-10% of training) never left its plateau",
    ),
    Setting(
        "plateau_drop_ratio",
        1.5,
        "check 5 (fallback shape test, where the spec test has no eval points): a run is still on its early "
        "plateau after 25% when the loss falls by more than this times as much over a doubling of steps as "
        "over the doubling before it (12.5->25->50->100%), and by at least plateau_min_drop nats",
    ),
    Setting(
        "end_drop",
        0.02,
        "check 5: warn when the eval loss falls by more than this fraction of its final value over the last 10% "
        "of training (still dropping steeply: the length, not the schedule, sets the final loss)",
    ),
    Setting(
        "min_tokens_per_param", 10.0, "check 4: warn below this many training tokens per active non-embedding parameter"
    ),
    Setting(
        "active_params_match",
        0.05,
        "check 6: an MoE and a dense size are compared when their active non-embedding parameters differ by at "
        "most this fraction",
    ),
    Setting(
        "max_dropped_frac",
        0.1,
        "check 6: warn when an MoE cell drops more than this fraction of its tokens at capacity (last 10% of steps)",
    ),
    Setting(
        "min_seeds",
        float(MIN_SEEDS),
        "check 7: fail a compared cell or a ladder length with fewer seeds (no interval below 3)",
    ),
    Setting("warn_seeds", 5.0, "check 7: warn a compared cell with fewer seeds"),
)


@dataclass(frozen=True)
class Check:
    name: str
    number: int  # the spec's check, 1-8
    scope: str
    qualifies: frozenset  # the numbers its rows qualify: keys of QUALIFIES
    doc: str


# The numbers a check's rows qualify: a failed row blocks them (the report
# shows them under the failure, never as a result), a warned row is named
# beside them.
QUALIFIES = {
    "speedup": "the cell's speedup over the baseline (the speedup view)",
    "loss_gap": "the cell's final-loss gap to the baseline (the speedup view)",
    "sweeps": "the points the cell's sweeps ran at its lr: U-sweep points, removals, contributions "
    "(the usweep and ablation views)",
    "scaling": "the cell's scaling-sweep points and every fit and compute multiplier that uses them "
    "(the scaling_points, scaling_fit and compute_multiplier views)",
}
_BOTH = frozenset({"speedup", "loss_gap"})
# The checks of the runs themselves at a cell (not of its comparison with the
# baseline) qualify the cell's other points too; the scaling points' lr is
# judged by scaling_lr (their own lr), not by lr_bracketed.
_RUNS = _BOTH | {"sweeps", "scaling"}
CHECKS = (
    Check(
        "loss_falls_with_size",
        1,
        "arm",
        _RUNS,
        "per family and arm, a larger size (by active non-embedding parameters) at the same length has a lower mean "
        "final loss than the next smaller one: fail if higher, warn if lower by less than the seed noise",
    ),
    Check(
        "lr_bracketed", 2, "arm", _BOTH | {"sweeps"}, "every compared lr is interior to its sweep: fail if unbracketed"
    ),
    Check(
        "scaling_lr",
        2,
        "arm",
        frozenset({"scaling"}),
        "the cell's scaling-sweep points ran at the lr its lr sweep (or selection) chose at their size, and that lr "
        "is interior to the sweep: fail if never swept there, unbracketed, or another lr",
    ),
    Check(
        "ladder_brackets_arm",
        3,
        "arm",
        frozenset({"speedup"}),
        "the baseline's ladder brackets the arm's loss: fail if the speedup is only a bound, or missing",
    ),
    Check(
        "tokens_per_param",
        4,
        "size",
        _RUNS,
        "training tokens per active non-embedding parameter: warn below the threshold",
    ),
    Check(
        "plateau_exit",
        5,
        "arm",
        _RUNS,
        "the runs have left their early plateau by 25% of training (the spec's test where eval points allow it, "
        "else the shape test) and ended clearly below their size's plateau level: warn otherwise (the final loss "
        "then times the plateau exit)",
    ),
    Check("end_slope", 5, "arm", _RUNS, "the runs are not still dropping steeply over the last 10% of training: warn"),
    Check(
        "moe_vs_dense",
        6,
        "arm",
        _RUNS,
        "the MoE baseline is not worse than the dense baseline of the same active size: fail beyond seed noise, warn "
        "within it",
    ),
    Check("dropped_tokens", 6, "arm", _RUNS, "MoE dropped-token fraction per cell: warn above the threshold"),
    Check(
        "seeds_per_cell",
        7,
        "arm",
        _BOTH,
        "reported seeds per compared cell: fail below min_seeds, warn below warn_seeds",
    ),
    Check(
        "ladder_seeds",
        7,
        "arm",
        frozenset({"speedup"}),
        "seeds per length of the baseline's ladder (a baseline row): fail below min_seeds",
    ),
    Check(
        "effect_vs_noise",
        7,
        "arm",
        frozenset({"loss_gap"}),
        "the paired loss-gap interval excludes 0: warn 'cannot tell' otherwise (a result, not a protocol failure)",
    ),
    Check(
        "seeds_disjoint",
        8,
        "study",
        _RUNS,
        "the reported seeds are disjoint from the selection and tuning seeds: fail on any overlap",
    ),
)
_ORDER = {c.name: i for i, c in enumerate(CHECKS)}
_CHECK = {c.name: c for c in CHECKS}


def settings(overrides: Mapping | None = None, where: str = "health") -> dict[str, float]:
    """The health thresholds: SETTINGS' defaults with a study's overrides."""
    known = {s.name: s.default for s in SETTINGS}
    for name, value in (overrides or {}).items():
        if name not in known:
            raise ConfigError(f"{where}.{name}", f"unknown health setting; allowed: {', '.join(known)}")
        if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
            raise ConfigError(f"{where}.{name}", f"{value!r} is not allowed; expected a number >= 0")
    return known | {k: float(v) for k, v in (overrides or {}).items()}


# ---------------------------------------------------------------- rows
def row(check: str, status: str, message: str, *, family=None, size=None, arm=None, value=None, threshold=None) -> dict:
    scope = "study" if family is None else "family" if size is None else "size" if arm is None else "arm"
    return {
        "check_name": check,
        "scope": scope,
        "family": family,
        "size": size,
        "arm": arm,
        "status": status,
        "value": None if value is None else float(value),
        "threshold": None if threshold is None else float(threshold),
        "message": message,
    }


def sort_rows(rows: list[dict]) -> list[dict]:
    """Rows in check order (stable within a check)."""
    return sorted(rows, key=lambda r: _ORDER[r["check_name"]])


def health_frame(rows: list[dict]) -> pl.DataFrame:
    """The rows as a frame with HEALTH_SCHEMA, in check order."""
    rows = sorted(rows, key=lambda r: _ORDER[r["check_name"]])
    return pl.DataFrame([{k: r[k] for k in HEALTH_SCHEMA} for r in rows], schema=HEALTH_SCHEMA, orient="row")


def covering(health_rows, size: str, arm: str, *, baseline: str = "baseline", family: str | None = None) -> list[dict]:
    """The rows whose scope covers the (size, arm) cell: the study's; the
    size's family's; the size's; the cell's own or the baseline's cell at
    that size (a number of the cell compares with it). `health_rows`: rows
    or a frame of them."""
    rows = health_rows.to_dicts() if isinstance(health_rows, pl.DataFrame) else list(health_rows)
    if family is None:
        family = next((r["family"] for r in rows if r["size"] == size and r["family"] is not None), None)

    def covers(r: dict) -> bool:
        return {
            "study": True,
            "family": r["family"] == family,
            "size": r["size"] == size,
            "arm": r["size"] == size and r["arm"] in (arm, baseline),
        }[r["scope"]]

    return [r for r in rows if covers(r)]


def blocking_failures(
    health_rows,
    size: str,
    arm: str,
    *,
    baseline: str = "baseline",
    estimate: str = "speedup",
    family: str | None = None,
) -> list[str]:
    """The checks that fail for the (size, arm) `estimate` ('speedup' or
    'loss_gap'): the report shows that number under these failures, not as
    a headline. A failed row qualifies it when its check qualifies that
    estimate and its scope covers the cell (`covering`)."""
    if estimate not in ("speedup", "loss_gap"):
        raise ValueError(f"estimate: {estimate!r}; allowed: speedup, loss_gap")
    names = {
        r["check_name"]
        for r in covering(health_rows, size, arm, baseline=baseline, family=family)
        if r["status"] == FAIL and estimate in _CHECK[r["check_name"]].qualifies
    }
    return sorted(names, key=_ORDER.__getitem__)


def _names(checks: set[str]) -> str | None:
    return ", ".join(sorted(checks, key=_ORDER.__getitem__)) or None


def named_checks(health_rows, cells, estimate: str) -> dict[str, str | None]:
    """CHECK_COLUMNS for a number that rests on the runs of `cells`, each a
    (family, size, arm) judged as its own cell (its rows, its size's, its
    family's, the study's; `covering` with baseline=arm): the failed and the
    warned checks among those that qualify `estimate` (a key of QUALIFIES),
    a check that fails at one cell and warns at another named as failed."""
    if estimate not in QUALIFIES:
        raise ValueError(f"estimate: {estimate!r}; allowed: {', '.join(QUALIFIES)}")
    rows = health_rows.to_dicts() if isinstance(health_rows, pl.DataFrame) else list(health_rows)
    found: dict[str, set[str]] = {FAIL: set(), WARN: set()}
    for family, size, arm in cells:
        for r in covering(rows, size, arm, baseline=arm, family=family):
            if r["status"] in found and estimate in _CHECK[r["check_name"]].qualifies:
                found[r["status"]].add(r["check_name"])
    return {"failed_checks": _names(found[FAIL]), "warned_checks": _names(found[WARN] - found[FAIL])}


CHECK_COLUMNS = ("failed_checks", "warned_checks")
CHECK_DOCS = {
    "failed_checks": "the failed health checks that qualify this row's number (rlrs.analysis.health.QUALIFIES; "
    "those of the cells whose runs it rests on): comma-separated, check order; NULL: none failed. The report "
    "shows the number beside them, qualified, never as a clean result",
    "warned_checks": "the warned health checks that qualify it (as failed_checks; a check failed at one of its "
    "cells is listed there only); NULL: none warned",
}


def with_checks(frame: pl.DataFrame, health_rows, estimate: str, family: dict[str, str], arm: str = "arm"):
    """`frame` (one number per row at column `arm` and `size`) with
    CHECK_COLUMNS from `named_checks` of the row's (family, size, arm) cell;
    `family`: size -> family."""
    rows = health_rows.to_dicts() if isinstance(health_rows, pl.DataFrame) else list(health_rows)
    cells = frame.select("size", arm).unique().rows()
    got = {(size, a): named_checks(rows, [(family.get(size), size, a)], estimate) for size, a in cells}
    keys = list(zip(frame["size"].to_list(), frame[arm].to_list()))
    return frame.with_columns(pl.Series(c, [got[k][c] for k in keys], dtype=pl.Utf8) for c in CHECK_COLUMNS)


BLOCKED_BY = {"speedup": "speedup_blocked_by", "loss_gap": "loss_gap_blocked_by"}
BLOCKED_DOCS = {
    "speedup_blocked_by": "the failed health checks that qualify this row's speedup or bound (comma-separated, "
    "check order; NULL: none failed, or no number): the report shows it under them, never as a valid number",
    "loss_gap_blocked_by": "the failed health checks that qualify this row's loss gap (as speedup_blocked_by)",
}


def with_blocking(estimates: pl.DataFrame, health_rows, baseline: str = "baseline") -> pl.DataFrame:
    """The speedup rows (size, arm, family, speedup, bound, loss_gap, ...)
    with BLOCKED_BY's columns: for each number the row has, the checks that
    block it (`blocking_failures`), NULL when none does. The one decision
    the report's headline table and its figures both read."""
    rows = health_rows.to_dicts() if isinstance(health_rows, pl.DataFrame) else list(health_rows)
    out = {c: [] for c in BLOCKED_BY.values()}
    for r in estimates.iter_rows(named=True):
        has = {"speedup": r["speedup"] is not None or r["bound"] is not None, "loss_gap": r["loss_gap"] is not None}
        for estimate, column in BLOCKED_BY.items():
            fails = (
                blocking_failures(rows, r["size"], r["arm"], baseline=baseline, estimate=estimate, family=r["family"])
                if has[estimate]
                else []
            )
            out[column].append(", ".join(fails) or None)
    return estimates.with_columns(pl.Series(c, v, dtype=pl.Utf8) for c, v in out.items())
