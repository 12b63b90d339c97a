"""Speedup of every arm over the baseline, per size, by both definitions
(`ladder`, `target`; see rlrs.analysis), the final-loss gap, and the
transfer of the speedup across sizes."""

from __future__ import annotations

import numpy as np
import polars as pl

from rlrs import tags
from rlrs.analysis.estimates import ladder_speedup
from rlrs.analysis.estimates import loss_gap as paired_loss_gap
from rlrs.analysis.members import (
    BASELINE,
    F,
    Group,
    I,
    S,
    baseline_ladder,
    best_group,
    choice_notes,
    compared_group,
    excluded_note,
    frame,
    ladder_lrs,
    lr_candidates,
    measured,
    size_family,
    size_order,
    size_params,
    stage1_seeds,
)
from rlrs.analysis.stats import ladder_t_star, target_t_star

SPEEDUP_SCHEMA = {
    "study": S,
    "size": S,
    "arm": S,
    "definition": S,
    "speedup": F,
    "ci_low": F,
    "ci_high": F,
    "bound": S,
    "bound_value": F,
    "saved": F,
    "saved_ci_low": F,
    "saved_ci_high": F,
    "n_seeds": I,
    "steps": I,
    "t_star": F,
    "arm_loss": F,
    "arm_lr": F,
    "baseline_lr": F,
    "baseline_lengths": I,
    "baseline_seeds": I,
    "family": S,
    "params_nonembedding": I,
    "params_active_nonembedding": I,
    "baseline_loss": F,
    "loss_gap": F,
    "loss_gap_ci_low": F,
    "loss_gap_ci_high": F,
    "note": S,
    "method": S,
    "n_pairs": I,
    "reference": S,
    "n_resamples": I,
    "n_dropped": I,
    "loss_gap_method": S,
    "loss_gap_n_pairs": I,
    "loss_gap_se": F,
    "welch_gap": F,
    "welch_ci_low": F,
    "welch_ci_high": F,
    "welch_df": F,
    "speedup_kind": S,  # SPEEDUP_KINDS; NULL: no number
    "speedup_blocked_by": S,  # rlrs.analysis.health.with_blocking (after the health checks)
    "loss_gap_blocked_by": S,
}
# What a row's speedup number is: a point estimate, or a bound the ladder
# (or the eval curve) could not close: the true value lies beyond it.
SPEEDUP_KINDS = {"estimate": "estimate", ">": "at least", "<": "at most"}
KIND_DOC = {
    "speedup_kind": "estimate: speedup is a point estimate; at least / at most: only a bound (bound_value), the "
    "arm's loss lying beyond the baseline's longest run or above its shortest (never extrapolated); NULL: no number"
}


TRANSFER_SCHEMA = {
    "study": S,
    "arm": S,
    "definition": S,
    "family": S,
    "size": S,
    "params_nonembedding": I,
    "params_active_nonembedding": I,
    "speedup": F,
    "ci_low": F,
    "ci_high": F,
    "bound": S,
    "bound_value": F,
    "n_seeds": I,
    "speedup_kind": S,
    "speedup_blocked_by": S,
}


# ---------------------------------------------------------------- speedup
def _eval_curves(evals: pl.DataFrame, run_ids: list[str]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(steps trained, [run x eval point] losses, the runs in row order) for
    the given runs, on the eval steps that every one of them has."""
    part = evals.filter(pl.col("run_id").is_in(run_ids))
    if part.is_empty():
        return np.array([]), np.empty((0, 0)), []
    wide = part.pivot(on="run_id", index="step", values="eval_loss").drop_nulls().sort("step")
    cols = [r for r in run_ids if r in wide.columns]
    # Eval after the update of step t means t + 1 steps trained.
    return wide["step"].to_numpy() + 1, wide.select(cols).to_numpy().T, cols


def speedup(members: pl.DataFrame, evals: pl.DataFrame, study: str = "", baseline: str = BASELINE) -> pl.DataFrame:
    """Speedup of every non-baseline main arm over the baseline, per size,
    by both definitions (see module docstring). `evals`: run_id, step,
    eval_loss for the baseline runs (non-null eval points)."""
    rows = []
    params, family = size_params(members), size_family(members)
    main_arms = sorted(set(members.filter(pl.col("sweep") == tags.MAIN)["arm"].to_list()) - {baseline})
    for size in size_order(members):
        base_group = compared_group(members, size, baseline)
        ladder = baseline_ladder(members, size, baseline)
        ladder_notes = []
        if ladder and any(lr != ladder[0].lr for lr in ladder_lrs(members, size, baseline)):
            ladder_notes = [
                f"ladder runs not at the baseline's best lr {ladder[0].lr:g} left out "
                f"(ladder lrs: {', '.join(f'{x:g}' for x in ladder_lrs(members, size, baseline))}); "
                "set the baseline's lr at this size to its best to use them"
            ]
        for arm in main_arms:
            candidates = lr_candidates(members, size, arm)
            if not candidates:
                continue  # this arm does not run at this size
            chosen = best_group(candidates)
            group = measured(chosen, members)
            base = {
                "study": study,
                "size": size,
                "arm": arm,
                "family": family[size],
                "params_nonembedding": params[size][0],
                "params_active_nonembedding": params[size][1],
            }
            # Runs left out of the numbers: of the compared arm group and of the baseline points.
            excl = (
                excluded_note(([group] if group else candidates) + ladder)
                + choice_notes(candidates, chosen)
                + ladder_notes
            )
            if left_out := stage1_seeds(chosen, members):
                excl.append(
                    f"stage-1 run(s) on selection seed(s) {', '.join(map(str, left_out))} left out of the "
                    "comparison (they chose the lr)"
                )
            if group is None or not len(group.losses):
                for d in ("ladder", "target"):
                    rows.append(
                        base
                        | {"definition": d, "n_seeds": 0, "note": "; ".join(excl + ["no completed runs of this arm"])}
                    )
                continue
            base |= {
                "n_seeds": len(group.losses),
                "steps": group.steps,
                "arm_loss": group.mean,
                "arm_lr": group.lr,
                **loss_gap(base_group, group),
            }
            gap_note = base.pop("_gap_note", None)
            excl = excl + ([f"loss gap: {gap_note}"] if gap_note else [])
            rows.append(base | _ladder_row(group, ladder, excl))
            rows.append(base | _target_row(group, ladder, evals, excl))
    return frame(rows, SPEEDUP_SCHEMA)


def loss_gap(base: Group | None, arm: Group) -> dict:
    """Baseline minus arm final eval loss at the same length, each at its
    compared lr (positive: the arm is better): the mean of the seed-paired
    differences with a Student-t interval, Welch's unpaired interval beside
    it (rlrs.analysis.estimates.loss_gap; no interval below 3 seeds).
    Defined even where the speedup is only a bound."""
    if base is None or not len(base.losses) or base.steps != arm.steps:
        return {}
    g = paired_loss_gap(base.by_seed(), arm.by_seed(), reference=_reference(base))
    return {
        "baseline_loss": base.mean,
        "loss_gap": g["loss_gap"],
        "loss_gap_ci_low": g["ci_low"],
        "loss_gap_ci_high": g["ci_high"],
        "loss_gap_method": g["method"],
        "loss_gap_n_pairs": g["n_pairs"],
        "loss_gap_se": g["se"],
        "welch_gap": g["welch_gap"],
        "welch_ci_low": g["welch_ci_low"],
        "welch_ci_high": g["welch_ci_high"],
        "welch_df": g["welch_df"],
        "_gap_note": g["note"],
    }


def _reference(g: Group, what: str = "") -> str:
    return f"{g.arm} lr {g.lr:g}, {what or f'{g.steps} steps'}"


def _estimate_row(definition: str, est: dict, notes: list[str], **extra) -> dict:
    keys = (
        "speedup",
        "t_star",
        "bound",
        "bound_value",
        "ci_low",
        "ci_high",
        "saved",
        "saved_ci_low",
        "saved_ci_high",
        "method",
        "n_pairs",
        "reference",
        "n_resamples",
        "n_dropped",
    )
    kind = "estimate" if est["speedup"] is not None else est["bound"][0] if est["bound"] is not None else None
    return {
        "definition": definition,
        **{k: est[k] for k in keys},
        "speedup_kind": SPEEDUP_KINDS.get(kind),
        "note": "; ".join(notes + ([est["note"]] if est["note"] else [])) or None,
        **extra,
    }


def _ladder_row(arm: Group, ladder: list[Group], notes: list[str]) -> dict:
    if len(ladder) < 2:
        return {
            "definition": "ladder",
            "baseline_lengths": len(ladder),
            "note": "; ".join(
                notes + [f"ladder needs baseline runs at >= 2 lengths at the baseline's best lr; have {len(ladder)}"]
            ),
        }
    est = ladder_speedup(
        arm.by_seed(),
        arm.steps,
        {g.steps: g.by_seed() for g in ladder},
        ladder_t_star,
        reference=_reference(ladder[0], f"{len(ladder)} lengths {ladder[0].steps}-{ladder[-1].steps} steps"),
    )
    at_t = [g for g in ladder if g.steps == arm.steps]
    return _estimate_row(
        "ladder",
        est,
        notes,
        baseline_lengths=len(ladder),
        baseline_seeds=min(len(g.losses) for g in ladder),
        baseline_lr=at_t[0].lr if at_t else None,
    )


def _target_row(arm: Group, ladder: list[Group], evals: pl.DataFrame, notes: list[str]) -> dict:
    if not ladder:
        return {"definition": "target", "note": "; ".join(notes + ["no completed baseline run at this size"])}
    longest = ladder[-1]
    steps, curves, run_ids = _eval_curves(evals, longest.run_ids)
    if len(steps) == 0:
        return {"definition": "target", "note": "; ".join(notes + ["the longest baseline run has no eval points"])}
    # The eval points play the ladder's lengths: seed s's curve is one
    # "run" per point, so the bootstrap resamples seeds jointly across the
    # arm and the curve (the same cluster bootstrap as the ladder's).
    seeds = [int(s) for s, rid in zip(longest.seeds, longest.run_ids) if rid in set(run_ids)]
    est = ladder_speedup(
        arm.by_seed(),
        arm.steps,
        {int(t): dict(zip(seeds, curves[:, j].tolist())) for j, t in enumerate(steps)},
        lambda x, m, level: target_t_star(x, m, level),
        reference=_reference(longest, f"eval curve of its {longest.steps}-step run"),
    )
    extra = [] if longest.steps == arm.steps else [f"baseline eval curve from its {longest.steps}-step run"]
    return _estimate_row(
        "target", est, notes + extra, baseline_lengths=1, baseline_seeds=curves.shape[0], baseline_lr=longest.lr
    )


def transfer(speedups: pl.DataFrame) -> pl.DataFrame:
    """Speedup against model size per arm and definition: the question
    "tuned small, does it still win large?"."""
    return speedups.select(list(TRANSFER_SCHEMA)).sort(
        ["arm", "definition", "family", "params_nonembedding", "size"], nulls_last=True
    )
