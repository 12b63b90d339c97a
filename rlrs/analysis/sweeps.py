"""The sweeps' tables: final losses per arm, the base-lr sweep, U-plots and
the ablations (the transfer regret over them: rlrs.analysis.regret).

Every derived run is compared with its own arm label at the same size, lr
and length (rlrs.tags): the scaled arm for a U-sweep, the arm a component
is reset in for a removal, the `into` arm for a contribution, whose
`source_arm` tag says whose values were added.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from rlrs import tags
from rlrs.analysis import health
from rlrs.analysis.estimates import loss_gap
from rlrs.analysis.members import (
    F,
    Group,
    I,
    S,
    best_group,
    excluded_note,
    frame,
    lr_pool,
    main_steps,
    mean_over,
    seed_groups,
    size_family,
    size_order,
    size_params,
)

FINAL_LOSSES_SCHEMA = {
    "study": S,
    "size": S,
    "arm": S,
    "lr": F,
    "steps": I,
    "mean_loss": F,
    "std_loss": F,
    "min_loss": F,
    "max_loss": F,
    "n": I,
    "n_excluded": I,
    "params_nonembedding": I,
}


LR_SWEEP_SCHEMA = {
    "study": S,
    "size": S,
    "arm": S,
    "lr": F,
    "lr_factor": F,
    "steps": I,
    "mean_loss": F,
    "std_loss": F,
    "n": I,
    "n_excluded": I,
    "n_diverged": I,
    "is_best": pl.Boolean,
    "run_ids": S,
    "mean_loss_shared": F,
    "n_shared": I,
    "shared_seeds": S,
}


USWEEP_SCHEMA = {
    "study": S,
    "size": S,
    "base_arm": S,
    "component": S,
    "which": S,
    "factor": F,
    "mean_loss": F,
    "std_loss": F,
    "n": I,
    "n_excluded": I,
    "is_best": pl.Boolean,
    "params_nonembedding": I,
    "run_ids": S,
    "delta": F,
    "n_pairs": I,
    "mean_loss_shared": F,
    "n_shared": I,
    "shared_seeds": S,
    "failed_checks": S,
    "warned_checks": S,
}


# The sweeps' shared-seed columns (lr_sweep, usweep): what best_group ranks on.
SHARED_DOCS = {
    "mean_loss": "mean final eval loss over every completed seed of the point (points may hold different seeds: "
    "compare mean_loss_shared)",
    "mean_loss_shared": "mean final eval loss over the seeds every competing point of its (size, arm) has "
    "(members.best_group ranks on these; NULL when they share none)",
    "n_shared": "seeds in mean_loss_shared",
    "shared_seeds": "those seeds, comma-separated",
}


ABLATION_SCHEMA = {
    "study": S,
    "size": S,
    "kind": S,
    "component": S,
    "reference_arm": S,
    "loss": F,
    "reference_loss": F,
    "delta": F,
    "n": I,
    "n_reference": I,
    "n_excluded": I,
    "note": S,
    "n_pairs": I,
    "method": S,
    "delta_ci_low": F,
    "delta_ci_high": F,
    "delta_unpaired": F,
    "reference_loss_all": F,
    "failed_checks": S,
    "warned_checks": S,
}


# ---------------------------------------------------------------- summaries
def _group_stats(g: Group) -> dict:
    n = len(g.losses)
    return {
        "mean_loss": g.mean if n else None,
        "std_loss": float(g.losses.std(ddof=1)) if n >= 2 else None,
        "n": n,
        "n_excluded": g.n_excluded,
    }


def common_seeds(groups: list[Group]) -> set[int]:
    """The seeds every competing point has (members.lr_pool: the points that
    compete for the best; empty when they share none)."""
    sets = [set(g.seeds) for g in lr_pool(groups)]
    return set.intersection(*sets) if sets else set()


def _shared_stats(g: Group, common: set[int]) -> dict:
    """The point's mean over `common` (what best_group ranks on)."""
    seeds = sorted(set(g.seeds) & common)
    return {
        "mean_loss_shared": mean_over(g, set(seeds)) if seeds else None,
        "n_shared": len(seeds),
        "shared_seeds": ", ".join(map(str, seeds)) or None,
    }


def final_losses(members: pl.DataFrame, study: str = "") -> pl.DataFrame:
    """Final eval loss per (size, arm) of the main runs: mean, std, n."""
    params = size_params(members)
    rows = []
    for g in seed_groups(members.filter(pl.col("sweep") == tags.MAIN)):
        rows.append(
            {
                "study": study,
                "size": g.size,
                "arm": g.arm,
                "lr": g.lr,
                "steps": g.steps,
                **_group_stats(g),
                "min_loss": float(g.losses.min()) if len(g.losses) else None,
                "max_loss": float(g.losses.max()) if len(g.losses) else None,
                "params_nonembedding": params[g.size][0],
            }
        )
    order = {s: i for i, s in enumerate(size_order(members))}
    return frame(rows, FINAL_LOSSES_SCHEMA).sort(pl.col("size").replace_strict(order, default=len(order)), "arm", "lr")


def lr_sweep(members: pl.DataFrame, study: str = "") -> pl.DataFrame:
    """Final loss against base lr per (size, arm) wherever an lr sweep ran;
    the main runs join as the sweep's factor-1 point. `is_best` marks the
    lr the speedup comparison uses. `mean_loss` pools every seed of a
    point; `mean_loss_shared` averages the seeds every point of the
    (size, arm) has (in a staged study the chosen lr's point holds the
    selection seeds and the reported ones, the other lrs the selection
    seeds only): the best lr is the lowest of these."""
    rows = []
    swept = members.filter(pl.col("sweep") == tags.LR).select("size", "arm").unique()
    for size, arm in swept.sort(["size", "arm"]).iter_rows():
        steps = main_steps(members, size, arm)
        cand = members.filter(
            (pl.col("size") == size)
            & (pl.col("arm") == arm)
            & pl.col("sweep").is_in(tags.LR_SWEEPS)
            & ((pl.col("steps") == steps) if steps is not None else pl.lit(True))
        )
        groups = seed_groups(cand)
        best, common = best_group(groups), common_seeds(groups)
        main_lr = cand.filter(pl.col("sweep") == tags.MAIN)["lr"].drop_nulls()
        for g in groups:
            if g.lr is None:  # planned runs not ingested yet
                continue
            tagged = cand.filter((pl.col("lr") == g.lr))["lr_factor"].drop_nulls()
            factor = float(tagged[0]) if len(tagged) else (g.lr / float(main_lr[0]) if len(main_lr) else None)
            rows.append(
                {
                    "study": study,
                    "size": size,
                    "arm": arm,
                    "lr": g.lr,
                    "lr_factor": factor,
                    "steps": g.steps,
                    **_group_stats(g),
                    "n_diverged": g.n_diverged,
                    "is_best": g is best,
                    "run_ids": ",".join(g.run_ids),
                    **_shared_stats(g, common),
                }
            )
    return frame(rows, LR_SWEEP_SCHEMA)


def _matching_reference(members: pl.DataFrame, size: str, arm: str, lr: float, steps: int) -> Group | None:
    """The reference arm's group at the same size, lr and length (main or lr
    sweep): any other lr or length would confound the comparison."""
    cand = members.filter(
        (pl.col("size") == size)
        & (pl.col("arm") == arm)
        & pl.col("sweep").is_in(tags.LR_SWEEPS)
        & (pl.col("lr") == lr)
        & (pl.col("steps") == steps)
    )
    groups = seed_groups(cand)
    return groups[0] if groups else None


def seed_matched(g: Group, ref: Group) -> dict:
    """g minus the reference run of the SAME seed, averaged over the seeds
    both have (a one-seed ablation against a 3-seed mean would mix the seed
    effect into the difference), with the paired-t interval from 3 pairs
    (rlrs.analysis.estimates.loss_gap, sign flipped: positive = g worse)."""
    gap = loss_gap(ref.by_seed(), g.by_seed(), reference=f"{ref.arm} lr {ref.lr:g}, {ref.steps} steps, same seeds")
    if not gap["n_pairs"]:
        return {"n_pairs": 0, "method": None, "note": "no seed in both the runs and the reference: no difference"}
    shared = sorted(set(g.seeds) & set(ref.seeds))
    notes = (
        []
        if set(ref.seeds) == set(shared)
        else [
            f"seed-matched on seed(s) {', '.join(map(str, shared))} of the reference's {', '.join(map(str, ref.seeds))}"
        ]
    )
    if gap["ci_low"] is None:
        notes.append(f"{gap['n_pairs']} pair(s): no interval below 3")
    flip = lambda x: None if x is None else -x  # noqa: E731
    return {
        "delta": flip(gap["loss_gap"]),
        "delta_ci_low": flip(gap["ci_high"]),
        "delta_ci_high": flip(gap["ci_low"]),
        "n_pairs": gap["n_pairs"],
        "method": gap["method"],
        "note": "; ".join(notes) or None,
    }


def _vs_reference(g: Group, ref: Group | None) -> dict:
    """A U-plot point against the factor-1 reference of the same seeds."""
    if ref is None or not len(g.losses) or not len(ref.losses):
        return {}
    matched = seed_matched(g, ref)
    return {"delta": matched.get("delta"), "n_pairs": matched["n_pairs"]}


def usweep(members: pl.DataFrame, health_rows, study: str = "") -> pl.DataFrame:
    """U-plot points: final loss per (size, component, start|end, factor),
    with the unscaled base arm at the same lr and length as factor 1 (and
    the shared-seed means, as lr_sweep), each beside the health checks that
    qualify its (size, base arm) cell's points (health.with_checks)."""
    # A U-sweep point needs its tags; a hand-made plan row without them is skipped, not guessed.
    sw = members.filter(
        (pl.col("sweep") == tags.USWEEP) & pl.all_horizontal(pl.col("component", "which", "factor").is_not_null())
    )
    if sw.is_empty():
        return frame([], USWEEP_SCHEMA)
    sw = sw.with_columns(pl.col("arm").alias("base_arm"))  # the scaled arm (rlrs.tags)
    params = size_params(members)
    rows = []
    keys = ["size", "base_arm", "component", "which"]
    for (size, base_arm, comp, which), part in sw.group_by(keys, maintain_order=True):
        points = []
        for factor, fpart in part.group_by("factor", maintain_order=True):
            points.append((float(factor[0]), _merge_groups(seed_groups(fpart))))
        lrs, steps = part["lr"].drop_nulls().unique(), part["steps"].drop_nulls().unique()
        ref = next((g for f, g in points if f == 1.0), None)
        if base_arm and len(lrs) == 1 and len(steps) == 1 and ref is None:
            ref = _matching_reference(members, size, base_arm, float(lrs[0]), int(steps[0]))
            if ref is not None:
                points.append((1.0, ref))
        best = best_group([g for _, g in sorted(points, key=lambda p: p[0])])  # the lr rule, over factors
        common = common_seeds([g for _, g in points])
        for f, g in sorted(points, key=lambda p: p[0]):
            rows.append(
                {
                    "study": study,
                    "size": size,
                    "base_arm": base_arm,
                    "component": comp,
                    "which": which,
                    "factor": f,
                    **_group_stats(g),
                    "is_best": g is best,
                    "params_nonembedding": params[size][0],
                    "run_ids": ",".join(g.run_ids),
                    **_vs_reference(g, ref),
                    **_shared_stats(g, common),
                }
            )
    order = {s: i for i, s in enumerate(size_order(members))}
    out = frame(rows, USWEEP_SCHEMA).sort(
        "component", "which", pl.col("size").replace_strict(order, default=len(order)), "factor"
    )
    return health.with_checks(out, health_rows, "sweeps", size_family(members), arm="base_arm")


def _merge_groups(groups: list[Group]) -> Group:
    """Pool the seeds of one sweep point into one group. A point is one
    (lr, length) group in any sane study; pooling keeps every run counted
    even if a study varies something else along with the factor."""
    losses = np.concatenate([g.losses for g in groups]) if groups else np.array([])
    first = groups[0]
    return Group(
        first.size,
        first.arm,
        first.lr,
        first.steps,
        losses,
        [r for g in groups for r in g.run_ids],
        [s for g in groups for s in g.seeds],
        {rid: st for g in groups for rid, st in g.excluded.items()},
    )


def ablation(members: pl.DataFrame, health_rows, study: str = "") -> pl.DataFrame:
    """Per component: removal = loss(RLRS with the component reset to (1, 1))
    - loss(RLRS), positive when the component's schedule helps; contribution
    = loss(baseline + only this component's RLRS values) - loss(baseline),
    negative when it helps. References are matched on size, lr and length.
    Each row is beside the health checks that qualify its (size, reference
    arm) cell's points (health.with_checks)."""
    rows = []
    for kind in tags.ABLATIONS:
        part = members.filter((pl.col("sweep") == kind) & pl.col("component").is_not_null())
        # Grouped by the run's arm (the reference) and, for a contribution, the
        # arm whose values were added: two relative arms never pool.
        keys = ["size", "component", "arm", "source_arm"]
        for (size, comp, ref_arm, _source), cpart in part.group_by(keys, maintain_order=True):
            g = _merge_groups(seed_groups(cpart))
            row = {
                "study": study,
                "size": size,
                "kind": kind,
                "component": comp,
                "reference_arm": ref_arm,
                "n": len(g.losses),
                "n_excluded": g.n_excluded,
            }
            notes = excluded_note([g])
            lrs, steps = cpart["lr"].drop_nulls().unique(), cpart["steps"].drop_nulls().unique()
            ref = None
            if ref_arm and len(lrs) == 1 and len(steps) == 1:
                ref = _matching_reference(members, size, ref_arm, float(lrs[0]), int(steps[0]))
            if ref is None or not len(ref.losses):
                notes.append("no completed reference run at the same size, lr and length")
            else:
                notes += [f"reference: {x}" for x in excluded_note([ref])]
                row |= {"reference_loss_all": ref.mean, "n_reference": len(ref.losses)}
            if len(g.losses):
                row["loss"] = g.mean
                if ref is not None and len(ref.losses):
                    # delta: seed-matched; the all-seeds difference beside it
                    matched = seed_matched(g, ref)
                    notes += [matched.pop("note")] if matched.get("note") else []
                    matched.pop("note", None)
                    shared = set(g.seeds) & set(ref.seeds)
                    row |= matched | {"delta_unpaired": g.mean - ref.mean}
                    if shared:
                        row["reference_loss"] = float(np.mean([v for s, v in ref.by_seed().items() if s in shared]))
            rows.append(row | {"note": "; ".join(notes) or None})
    order = {s: i for i, s in enumerate(size_order(members))}
    out = frame(rows, ABLATION_SCHEMA).sort(
        "kind", pl.col("size").replace_strict(order, default=len(order)), "component"
    )
    return health.with_checks(out, health_rows, "sweeps", size_family(members), arm="reference_arm")
