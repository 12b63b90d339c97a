"""The transfer regret of every swept parameter (the lr sweep per arm, each
U-sweep multiplier): does the factor best at the smallest size stay best
at the larger ones? From the frames of rlrs.analysis.sweeps (`lr_sweep`,
`usweep`), seed-matched on the two compared points' seeds.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from rlrs.analysis.members import F, I, S, completed, frame, size_family, size_order, size_parametrization

REGRET_SCHEMA = {
    "study": S,
    "parameter": S,
    "kind": S,
    "parametrization": S,
    "size": S,
    "reference_size": S,
    "chosen_factor": F,
    "best_factor": F,
    "loss_at_chosen": F,
    "best_loss": F,
    "regret": F,
    "note": S,
    "n_shared": I,
    "shared_seeds": S,
}


REGRET_DOCS = {
    "study": "study name",
    "parameter": "the swept parameter: lr (arm) or component.start|end (base arm)",
    "kind": "lr | usweep",
    "parametrization": "sp | mup: the line's parametrization (sizes are referred within one family and parametrization)",
    "size": "the larger size",
    "reference_size": "the smallest swept size of the line, where chosen_factor was best",
    "chosen_factor": "the factor best at reference_size (lr: lr / the grid's centre)",
    "best_factor": "the factor best at this size",
    "loss_at_chosen": "mean final eval loss at chosen_factor at this size, over shared_seeds",
    "best_loss": "mean final eval loss at best_factor at this size, over shared_seeds",
    "regret": "loss_at_chosen - best_loss, seed-matched (0 = the small size's choice is still optimal)",
    "note": "why a value is missing, or the pooled means when the two points hold other seeds too, or NULL",
    "n_shared": "seeds both means average over: those the chosen and the best point at this size both have",
    "shared_seeds": "those seeds, comma-separated (in a staged study the selection seeds: its chosen lr also "
    "pools the reported seeds, which the other lrs never ran)",
}


def _family_lines(sizes: list[str], order: dict[str, int], family: dict) -> list[list[str]]:
    """`sizes` split by model family (size -> its line's key), each list smallest first."""
    ordered = sorted(sizes, key=lambda s: order.get(s, len(order)))
    return [[s for s in ordered if family.get(s) == fam] for fam in dict.fromkeys(family.get(s) for s in ordered)]


def regret(lr_frame: pl.DataFrame, u_frame: pl.DataFrame, members: pl.DataFrame, study: str = "") -> pl.DataFrame:
    """Transfer regret of every swept parameter: at each larger size, the loss
    at the factor that was best at the smallest swept size minus the best
    loss at that size (0 = the small-scale choice is still optimal). Within a
    model family and parametrization only: a MoE size is referred to the
    smallest MoE size, a dense size to the smallest dense size, a muP size
    to the smallest muP size of its family (sp and muP lines never mix).

    Both losses are seed-matched: means over the seeds both compared points
    (the chosen factor's and the best one's) have. Pooled means would mix
    seed sets: in a staged study the chosen lr's point also holds the
    reported seeds, which the other lrs never ran. A chosen point with a
    diverged seed has no regret (its survivors would flatter it)."""
    order = {s: i for i, s in enumerate(size_order(members))}
    family, param = size_family(members), size_parametrization(members)
    line = {s: (family[s], param.get(s, "sp")) for s in family}
    done = completed(members).unique("run_id")
    results = {r: (s, v) for r, s, v in done.select("run_id", "seed", "final_eval_loss").iter_rows()}
    curves = []  # (parameter, kind, frame with size, factor, mean_loss, eligible)
    if not lr_frame.is_empty():
        for (arm,), part in lr_frame.group_by(["arm"], maintain_order=True):
            curves.append((f"lr ({arm})", "lr", part.rename({"lr_factor": "factor"})))
    if not u_frame.is_empty():
        for (base, comp, which), part in u_frame.group_by(["base_arm", "component", "which"], maintain_order=True):
            curves.append((f"{comp}.{which} ({base})", "usweep", part))
    rows = []
    for parameter, kind, part, sizes in [
        (parameter, kind, part, sizes)
        for parameter, kind, part in curves
        for sizes in _family_lines(part["size"].unique().to_list(), order, line)
    ]:
        best = {r["size"]: r for r in part.filter(pl.col("is_best")).iter_rows(named=True)}
        if len(sizes) < 2 or sizes[0] not in best or best[sizes[0]]["factor"] is None:
            continue  # nothing to refer to (an lr point without its factor: no lr_factor tag, no main run)
        ref = sizes[0]
        chosen = best[ref]["factor"]
        for size in sizes[1:]:
            row = {
                "study": study,
                "parameter": parameter,
                "kind": kind,
                "parametrization": param.get(ref, "sp"),
                "size": size,
                "reference_size": ref,
                "chosen_factor": chosen,
            }
            if size not in best:
                rows.append(row | {"note": "no eligible point at this size"})
                continue
            at = part.filter((pl.col("size") == size) & (pl.col("factor") - chosen).abs().lt(1e-9 * abs(chosen)))
            b = best[size]
            row |= {"best_factor": b["factor"]}
            if at.is_empty() or at["mean_loss"][0] is None:
                rows.append(row | {"note": f"factor {chosen:g} not run (or not completed) at this size"})
                continue
            rows.append(row | _seed_matched_regret(at.row(0, named=True), b, results))
    return frame(rows, REGRET_SCHEMA)


def _seed_matched_regret(at: dict, best: dict, results: dict[str, tuple[int, float]]) -> dict:
    """loss_at_chosen, best_loss, regret, n_shared, shared_seeds and note of
    one regret row: `at` (the chosen factor) and `best` are rows of the
    sweep's frame (run_ids: their completed runs), `results` run id ->
    (seed, final loss). The two means are over the seeds both points have."""
    if at.get("n_diverged"):
        return {
            "note": f"factor {at['factor']:g} diverged on {at['n_diverged']} seed(s) at this size: no regret "
            "(the small size's choice is unstable here; its surviving seeds would flatter it)"
        }
    a, b = (_losses_by_seed(r["run_ids"], results) for r in (at, best))
    shared = sorted(set(a) & set(b))
    if not shared:
        return {"note": "no seed in both the chosen and the best point at this size: no seed-matched regret"}
    loss, best_loss = (float(np.mean([v for seed in shared for v in d[seed]])) for d in (a, b))
    out = {
        "loss_at_chosen": loss,
        "best_loss": best_loss,
        "regret": loss - best_loss,
        "n_shared": len(shared),
        "shared_seeds": ", ".join(map(str, shared)),
    }
    if set(a) != set(shared) or set(b) != set(shared):
        out["note"] = (
            f"seed-matched on seed(s) {out['shared_seeds']}, the ones both points have; pooled over all their "
            f"seeds: {at['mean_loss']:.4f} (n={at['n']}) at the chosen factor, {best['mean_loss']:.4f} "
            f"(n={best['n']}) at the best"
        )
    return out


def _losses_by_seed(run_ids: str | None, results: dict[str, tuple[int, float]]) -> dict[int, list[float]]:
    out: dict[int, list[float]] = {}
    for rid in (run_ids or "").split(","):
        if rid in results:
            seed, loss = results[rid]
            out.setdefault(seed, []).append(loss)
    return out
