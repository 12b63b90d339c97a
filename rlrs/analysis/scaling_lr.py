"""Check 2 for the scaling sweep (`scaling_lr`): each (size, arm) cell's
scaling points ran at the lr its lr sweep (or stage-1 selection) chose at
their size, and that lr is bracketed. A pure function over the SCALING and
LR_CHOICES frames of rlrs.analysis.health; rlrs.analysis.health_view runs
it with the other checks on a study's database.
"""

from __future__ import annotations

import polars as pl

from rlrs.analysis.health import FAIL, PASS, row


def _same_lr(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-9 * max(abs(a), abs(b))


def scaling_lr(scaling: pl.DataFrame, lr_choices: pl.DataFrame) -> list[dict]:
    """Check 2 for the scaling sweep: per (family, size, arm) cell of
    SCALING, its points ran at its LR_CHOICES lr and that lr is bracketed.
    An lr at the sweep's edge (or never swept, or another lr than the
    sweep's best) mixes the arm's effect with lr mis-tuning in the fit and
    in any compute multiplier over it. The choice is judged at the lr
    sweep's length; the points' other lengths run at the same lr."""
    rows = []
    choice = {(r["size"], r["arm"]): r for r in lr_choices.iter_rows(named=True)}
    for (family, size, arm), g in scaling.group_by(["family", "size", "arm"], maintain_order=True):
        at = {"family": family, "size": size, "arm": arm}
        lrs = sorted(set(g["lr"].drop_nulls().to_list()))
        ran = f"lr {', '.join(f'{x:g}' for x in lrs)}" if lrs else "an unknown lr"
        value = lrs[0] if len(lrs) == 1 else None
        c = choice.get((size, arm))
        if c is None or c["lr"] is None or c.get("n_points") == 1:
            if c is None or not c.get("n_points"):
                why = "no lr sweep ran at this size"
            elif c.get("failed"):
                why = f"the lr selection at this size failed ({c.get('note')})"
            elif c["lr"] is None:
                why = "no lr was chosen at this size (every swept lr diverged or failed)"
            else:
                why = f"lr {c['lr']:g} is the only lr that ran at this size (no lr sweep)"
            status, msg = FAIL, f"the scaling points ran at {ran}, but {why}: not shown to be the best lr"
        elif not all(_same_lr(x, c["lr"]) for x in lrs):
            status, msg = (
                FAIL,
                f"the scaling points ran at {ran}, not at the lr the sweep chose at this size ({c['lr']:g}): "
                "the fit mixes the arm's effect with lr mis-tuning",
            )
        elif not c["bracketed"]:
            why = " after the bracketing cap" if c.get("cap_reached") else ""
            status, msg = (
                FAIL,
                f"the scaling points' {ran} is at the edge of its sweep{why}: the optimum may lie beyond it, so the "
                "fit (and a compute multiplier over it) mixes the arm's effect with lr mis-tuning",
            )
        else:
            status, msg = PASS, f"the scaling points' {ran} is the bracketed best lr at this size"
        rows.append(row("scaling_lr", status, msg, value=value, **at))
    return rows
