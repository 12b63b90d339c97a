"""The health checks 1-4 and 6-8 (spec section 3) as pure functions over
the frames of rlrs.analysis.health's input contracts (RUNS, LR_CHOICES,
SPEEDUPS); each returns rows of the `health` view (health.row). Check 5 is
rlrs.analysis.plateau; health_view runs them all on a study's database.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

from rlrs.analysis.estimates import loss_gap
from rlrs.analysis.health import FAIL, PASS, WARN, row


@dataclass
class _Cell:
    family: str
    size: str
    arm: str
    steps: int
    losses: dict[int, float]  # seed -> final loss
    params: int | None
    parametrization: str = "sp"  # sizes are compared within one family and parametrization

    @property
    def mean(self) -> float:
        return float(np.mean(list(self.losses.values())))

    @property
    def var(self) -> float | None:
        return float(np.var(list(self.losses.values()), ddof=1)) if len(self.losses) >= 2 else None


def _cells(runs: pl.DataFrame, sweep: str = "main") -> list[_Cell]:
    part = runs.filter((pl.col("sweep") == sweep) & pl.col("final_eval_loss").is_not_null())
    if "parametrization" not in part.columns:  # optional in the RUNS contract: sp
        part = part.with_columns(pl.lit("sp").alias("parametrization"))
    out = []
    keys = ["family", "size", "arm", "steps", "parametrization"]
    for (family, size, arm, steps, param), g in part.group_by(keys, maintain_order=True):
        out.append(
            _Cell(
                family,
                size,
                arm,
                steps,
                dict(zip(g["seed"].to_list(), g["final_eval_loss"].to_list())),
                g["params_active_nonembedding"].max(),
                param or "sp",
            )
        )
    return sorted(out, key=lambda c: (c.family, c.parametrization, c.arm, c.params or 0, c.size, c.steps))


def _grouped(items, key):
    """(key, [items]) in first-seen order."""
    out: dict = {}
    for it in items:
        out.setdefault(key(it), []).append(it)
    return out.items()


def _se(a: _Cell, b: _Cell) -> float | None:
    """Welch standard error of the difference of two cells' means."""
    if a.var is None or b.var is None:
        return None
    return math.sqrt(a.var / len(a.losses) + b.var / len(b.losses))


def _at(cell: _Cell):
    return {"family": cell.family, "size": cell.size, "arm": cell.arm}


# ---------------------------------------------------------------- check 1
def loss_falls_with_size(runs: pl.DataFrame, s: Mapping[str, float]) -> list[dict]:
    """Check 1, per family, parametrization and arm, on consecutive sizes
    (by active non-embedding parameters): a larger size's mean final loss above the
    next smaller one's fails (the spec's rule: higher, full stop); below it
    by less than noise_z standard errors warns. Sizes are compared at
    their main length; a larger size that trains fewer steps cannot be
    compared at equal length (warn). One row per larger size."""
    rows = []
    cells = _cells(runs)
    for _, group in _grouped(cells, lambda c: (c.family, c.parametrization, c.arm)):
        for small, large in zip(group, group[1:]):
            at = _at(large)
            if large.steps < small.steps:
                rows.append(
                    row(
                        "loss_falls_with_size",
                        WARN,
                        f"{large.size} trains {large.steps} steps, {small.size} "
                        f"{small.steps}: not comparable at equal length",
                        **at,
                    )
                )
                continue
            rise, se = large.mean - small.mean, _se(small, large)
            vs = f"{large.arm} at {large.size}: {large.mean:.3f} vs {small.mean:.3f} at {small.size}"
            if rise > 0:
                status, msg = FAIL, f"loss rises with size ({vs}, +{rise:.3f} nats): undertrained or mis-tuned"
            elif se is not None and -rise < s["noise_z"] * se:
                status, msg = (
                    WARN,
                    f"loss falls with size by less than seed noise ({vs}; {-rise:.3f} < {s['noise_z']:g} SE = {s['noise_z'] * se:.3f})",
                )
            else:
                status, msg = (
                    PASS,
                    f"loss falls with size ({vs})" + ("" if se is not None else "; seed noise unknown (< 2 seeds)"),
                )
            rows.append(row("loss_falls_with_size", status, msg, value=rise, threshold=0.0, **at))
    return rows


# ---------------------------------------------------------------- check 2
def lr_bracketed(lr_choices: pl.DataFrame) -> list[dict]:
    """Check 2: every compared lr is interior to its sweep."""
    rows = []
    for r in lr_choices.iter_rows(named=True):
        at = {"family": r["family"], "size": r["size"], "arm": r["arm"]}
        lr = f"lr {r['lr']:g}" if r["lr"] is not None else None
        if r["lr"] is None:
            why = r.get("note") if r.get("failed") else None
            rows.append(
                row(
                    "lr_bracketed",
                    FAIL,
                    f"the lr selection failed ({why}): no lr to measure at, the size is not measured"
                    if why
                    else "no lr chosen: every point of the sweep diverged or failed",
                    **at,
                )
            )
        elif r.get("n_points") == 1:
            rows.append(
                row(
                    "lr_bracketed",
                    FAIL,
                    f"{lr} is the only lr that ran (no lr sweep): not shown to be the "
                    "best, so 'each arm at its best lr' is not established",
                    value=r["lr"],
                    **at,
                )
            )
        elif r["bracketed"]:
            rows.append(row("lr_bracketed", PASS, f"{lr} is interior to its sweep", value=r["lr"], **at))
        else:
            why = " after the bracketing cap" if r.get("cap_reached") else ""
            rows.append(
                row(
                    "lr_bracketed",
                    FAIL,
                    f"{lr} is at the edge of its sweep{why}: the optimum may lie beyond it, "
                    "so 'each arm at its best lr' is not established",
                    value=r["lr"],
                    **at,
                )
            )
    return rows


# ---------------------------------------------------------------- check 3
def ladder_brackets_arm(speedups: pl.DataFrame) -> list[dict]:
    """Check 3: the baseline's ladder brackets each arm's loss."""
    rows = []
    for r in speedups.iter_rows(named=True):
        at = {"family": r["family"], "size": r["size"], "arm": r["arm"]}
        if r["speedup"] is not None:
            rows.append(
                row(
                    "ladder_brackets_arm",
                    PASS,
                    f"the ladder brackets {r['arm']}'s loss: speedup {r['speedup']:+.3f}",
                    value=r["speedup"],
                    **at,
                )
            )
        elif r["bound"] is not None:
            rows.append(
                row(
                    "ladder_brackets_arm",
                    FAIL,
                    f"{r['arm']}'s loss is outside the ladder: the speedup is only a bound ({r['bound']})",
                    **at,
                )
            )
        else:
            rows.append(
                row(
                    "ladder_brackets_arm",
                    FAIL,
                    "no ladder estimate (fewer than 2 baseline lengths at the baseline's chosen lr)",
                    **at,
                )
            )
    return rows


# ---------------------------------------------------------------- check 4
def tokens_per_param(runs: pl.DataFrame, s: Mapping[str, float]) -> list[dict]:
    """Check 4: tokens per active non-embedding parameter, per size (the
    longest main run of the size)."""
    rows = []
    main = (
        runs.filter(pl.col("sweep") == "main")
        .group_by("family", "size", maintain_order=True)
        .agg(pl.col("tokens").max(), pl.col("params_active_nonembedding").max())
    )
    for r in main.sort("family", "params_active_nonembedding", "size").iter_rows(named=True):
        if not r["tokens"] or not r["params_active_nonembedding"]:
            rows.append(
                row(
                    "tokens_per_param",
                    WARN,
                    "tokens or active non-embedding parameters unknown",
                    family=r["family"],
                    size=r["size"],
                    threshold=s["min_tokens_per_param"],
                )
            )
            continue
        ratio = r["tokens"] / r["params_active_nonembedding"]
        low = ratio < s["min_tokens_per_param"]
        msg = (
            f"{ratio:.2g} tokens per active non-embedding parameter ({r['tokens']:,} / {r['params_active_nonembedding']:,})"
            + (f" < {s['min_tokens_per_param']:g}: undertrained regime" if low else "")
        )
        rows.append(
            row(
                "tokens_per_param",
                WARN if low else PASS,
                msg,
                family=r["family"],
                size=r["size"],
                value=ratio,
                threshold=s["min_tokens_per_param"],
            )
        )
    return rows


# ---------------------------------------------------------------- check 6
def moe_vs_dense(runs: pl.DataFrame, s: Mapping[str, float], baseline: str = "baseline") -> list[dict]:
    """Check 6a: the MoE baseline against the dense baseline with the same
    active non-embedding parameters (within active_params_match) and the
    same length and parametrization, where both exist. Worse by more than noise_z Welch
    standard errors fails (a handicapped baseline flatters every arm
    compared with it); worse within noise, or with < 2 seeds a side, warns."""
    rows = []
    cells = [c for c in _cells(runs) if c.arm == baseline]
    dense = [c for c in cells if c.family == "dense" and c.params]
    for moe in (c for c in cells if c.family == "moe" and c.params):
        match = [
            d
            for d in dense
            if d.steps == moe.steps
            and d.parametrization == moe.parametrization
            and abs(moe.params - d.params) <= s["active_params_match"] * d.params
        ]
        if not match:
            continue
        d = min(match, key=lambda d: abs(moe.params - d.params))
        gap, se = moe.mean - d.mean, _se(moe, d)
        vs = f"MoE {moe.size} {moe.mean:.3f} vs dense {d.size} {d.mean:.3f} at {moe.params:,} / {d.params:,} active"
        if gap <= 0:
            status, msg = PASS, f"MoE baseline not worse than dense ({vs})"
        elif se is not None and gap > s["noise_z"] * se:
            status, msg = (
                FAIL,
                f"MoE baseline {gap:.3f} nats worse than dense ({vs}; > {s['noise_z']:g} SE): handicapped baseline",
            )
        else:
            status, msg = (
                WARN,
                f"MoE baseline {gap:.3f} nats worse than dense ({vs}), "
                + ("within seed noise" if se is not None else "seed noise unknown (< 2 seeds)"),
            )
        rows.append(
            row(
                "moe_vs_dense",
                status,
                msg,
                family="moe",
                size=moe.size,
                arm=baseline,
                value=gap,
                threshold=None if se is None else s["noise_z"] * se,
            )
        )
    return rows


def dropped_tokens(runs: pl.DataFrame, s: Mapping[str, float]) -> list[dict]:
    """Check 6b: mean dropped-token fraction over the last 10% of steps per MoE cell."""
    rows = []
    part = runs.filter((pl.col("sweep") == "main") & pl.col("dropped_frac_last").is_not_null())
    for r in (
        part.group_by("family", "size", "arm", maintain_order=True)
        .agg(pl.col("dropped_frac_last").mean())
        .iter_rows(named=True)
    ):
        high = r["dropped_frac_last"] > s["max_dropped_frac"]
        rows.append(
            row(
                "dropped_tokens",
                WARN if high else PASS,
                f"{100 * r['dropped_frac_last']:.1f}% of tokens dropped at capacity (last 10% of steps)"
                + (f" > {100 * s['max_dropped_frac']:g}%" if high else ""),
                family=r["family"],
                size=r["size"],
                arm=r["arm"],
                value=r["dropped_frac_last"],
                threshold=s["max_dropped_frac"],
            )
        )
    return rows


# ---------------------------------------------------------------- check 7
def seeds_per_cell(runs: pl.DataFrame, s: Mapping[str, float], baseline: str = "baseline") -> list[dict]:
    """Check 7a: seeds per compared cell (fail < min_seeds, warn < warn_seeds)
    and per baseline ladder length (fail < min_seeds)."""
    rows = []
    for c in _cells(runs):
        n = len(c.losses)
        status = FAIL if n < s["min_seeds"] else WARN if n < s["warn_seeds"] else PASS
        rows.append(
            row(
                "seeds_per_cell",
                status,
                f"{n} seed(s) in the compared cell"
                + {FAIL: f" < {s['min_seeds']:g}: no interval", WARN: f" < {s['warn_seeds']:g}", PASS: ""}[status],
                value=n,
                threshold=s["min_seeds"] if status == FAIL else s["warn_seeds"],
                **_at(c),
            )
        )
    for (family, size), lengths in _grouped(_cells(runs, "ladder"), lambda c: (c.family, c.size)):
        fewest = min(lengths, key=lambda c: len(c.losses))
        n = len(fewest.losses)
        status = FAIL if n < s["min_seeds"] else PASS
        rows.append(
            row(
                "ladder_seeds",
                status,
                f"fewest seeds at a ladder length: {n} (at {fewest.steps} steps)"
                + (f" < {s['min_seeds']:g}: no interval" if status == FAIL else ""),
                family=family,
                size=size,
                arm=baseline,
                value=n,
                threshold=s["min_seeds"],
            )
        )
    return rows


def effect_vs_noise(runs: pl.DataFrame, baseline: str = "baseline") -> list[dict]:
    """Check 7b: each arm's seed-paired loss gap against its own noise.
    value = |gap| / SE, threshold = the t quantile: below it the paired
    interval includes 0 and the study cannot tell the arms apart (warn;
    that is a finding, not a broken protocol). No interval: warn."""
    rows = []
    cells = _cells(runs)
    base = {(c.size, c.steps): c for c in cells if c.arm == baseline}
    for c in cells:
        b = base.get((c.size, c.steps))
        if c.arm == baseline or b is None:
            continue
        g = loss_gap(b.losses, c.losses)
        if g["ci_low"] is None:
            rows.append(
                row(
                    "effect_vs_noise",
                    WARN,
                    f"no interval ({g['n_pairs']} paired seed(s)): cannot tell",
                    value=None,
                    **_at(c),
                )
            )
            continue
        t_q = (g["ci_high"] - g["loss_gap"]) / g["se"] if g["se"] else math.inf
        ratio = abs(g["loss_gap"]) / g["se"] if g["se"] else math.inf
        ci = f"gap {g['loss_gap']:+.3f} nats, {g['method']} 95% [{g['ci_low']:+.3f}, {g['ci_high']:+.3f}], n={g['n_pairs']}"
        includes_zero = g["ci_low"] <= 0 <= g["ci_high"]
        rows.append(
            row(
                "effect_vs_noise",
                WARN if includes_zero else PASS,
                f"{ci}: " + ("the interval includes 0, cannot tell" if includes_zero else "beyond seed noise"),
                value=ratio if math.isfinite(ratio) else None,
                threshold=t_q if math.isfinite(t_q) else None,
                **_at(c),
            )
        )
    return rows


# ---------------------------------------------------------------- check 8
def seeds_disjoint(
    seeds: Sequence[int], selection_seeds: Sequence[int] | None, tune_seeds: Sequence[int]
) -> list[dict]:
    """Check 8: the reported seeds share none with the selection or tuning
    seeds. selection_seeds None: no lr was selected. A study that chose
    its lr on the reported seeds passes them as its selection seeds."""
    seeds, sel, tune = set(seeds), set(selection_seeds or ()), set(tune_seeds)
    overlap = seeds & (sel | tune)
    fmt = lambda x: "[" + ", ".join(map(str, sorted(x))) + "]"  # noqa: E731
    lists = (
        f"reported {fmt(seeds)}, selection {fmt(sel) if selection_seeds is not None else '(none)'}, tuning {fmt(tune)}"
    )
    if overlap:
        return [
            row(
                "seeds_disjoint",
                FAIL,
                f"seed(s) {fmt(overlap)[1:-1]} are reported and also chose a setting ({lists}): selection bias",
                value=len(overlap),
                threshold=0.0,
            )
        ]
    return [row("seeds_disjoint", PASS, f"disjoint ({lists})", value=0.0, threshold=0.0)]
