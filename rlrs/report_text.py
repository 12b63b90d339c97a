"""The report's words and tables: HTML escaping, number formats, the
headline's rows and the HTML tables, from analysis frames. No charts,
no files (rlrs.report lays out the page)."""

from __future__ import annotations

import html
import json

import polars as pl


# ---------------------------------------------------------------- text helpers
def esc(value) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _finite(obj):
    """NaN and infinities are not JSON (JSON.parse would fail on the page): null."""
    if isinstance(obj, float):
        return obj if obj == obj and obj not in (float("inf"), float("-inf")) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def script_json(obj) -> str:
    """JSON safe inside <script>: no '<' can open '</script>' or '<!--'."""
    text = json.dumps(_finite(obj), separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def human(n) -> str:
    """3100000 -> '3.1M'."""
    if n is None:
        return "?"
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.3g}{unit}"
    return str(int(n))


def pct(x: float) -> str:
    return f"{abs(x) * 100:.0f}%"


def headline_rows(speedup: pl.DataFrame) -> list[dict]:
    """Per (size, arm): the ladder row when it has a value or bound, else the target row."""
    rows = []
    for _, part in speedup.group_by(["size", "arm"], maintain_order=True):
        by_def = {r["definition"]: r for r in part.iter_rows(named=True)}
        usable = [
            by_def[d]
            for d in ("ladder", "target")
            if d in by_def and (by_def[d]["speedup"] is not None or by_def[d]["bound"] is not None)
        ]
        rows.append(usable[0] if usable else by_def.get("ladder") or next(iter(by_def.values())))
    return rows


def checks_text(failed: str | None, warned: str | None) -> str:
    """'fail: a, b; warn: c' for a number's failed_checks and warned_checks."""
    parts = ([f"fail: {failed}"] if failed else []) + ([f"warn: {warned}"] if warned else [])
    return "; ".join(parts) or "no failed or warned check"


def with_checks_text(frame: pl.DataFrame) -> pl.DataFrame:
    """`frame` (with the analysis' failed_checks, warned_checks) plus the
    text column `checks` that the tables show beside each number."""
    return frame.with_columns(
        pl.struct("failed_checks", "warned_checks")
        .map_elements(lambda r: checks_text(r["failed_checks"], r["warned_checks"]), return_dtype=pl.Utf8)
        .alias("checks")
    )


# ---------------------------------------------------------------- tables
def _fmt(value, kind: str = "") -> str:
    if value is None:
        return "—"
    if kind == "pct" and isinstance(value, float):
        return f"{value * 100:+.1f}%"
    if kind == "params":
        return human(value)
    if isinstance(value, float):
        return f"{value:.4g}" if kind != "loss" else f"{value:.4f}"
    return str(value)


def table(frame: pl.DataFrame, columns: dict[str, tuple[str, str]] | None = None, cls: str = "") -> str:
    """An escaped HTML table; columns: name -> (header, format kind)."""
    columns = columns or {c: (c, "") for c in frame.columns}
    head = "".join(f"<th>{esc(h)}</th>" for h, _ in columns.values())
    body = "".join(
        "<tr>" + "".join(f"<td>{esc(_fmt(r[c], kind))}</td>" for c, (_, kind) in columns.items()) + "</tr>"
        for r in frame.select(list(columns)).iter_rows(named=True)
    )
    return f'<table class="{esc(cls)}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


SPEEDUP_COLUMNS = {
    "size": ("size", ""),
    "params_nonembedding": ("non-emb. params", "params"),
    "arm": ("arm", ""),
    "definition": ("definition", ""),
    "speedup": ("speedup T*/T-1", "pct"),
    "ci_low": ("CI low", "pct"),
    "ci_high": ("CI high", "pct"),
    "bound": ("bound", ""),
    "saved": ("steps saved", "pct"),
    "n_seeds": ("seeds", ""),
    "arm_lr": ("arm lr", ""),
    "steps": ("steps T", ""),
    "t_star": ("T*", ""),
    "arm_loss": ("arm loss", "loss"),
    "baseline_loss": ("baseline loss", "loss"),
    "loss_gap": ("loss gap", "loss"),
    "loss_gap_ci_low": ("gap CI low", "loss"),
    "loss_gap_ci_high": ("gap CI high", "loss"),
    "note": ("note", ""),
}


SIZES_COLUMNS = {
    "size": ("size", ""),
    "d_model": ("d_model", ""),
    "n_layers": ("layers", ""),
    "moe": ("MoE", ""),
    "n_experts": ("experts", ""),
    "top_k": ("top-k", ""),
    "granularity": ("granularity", ""),
    "params_total": ("total params", "params"),
    "params_active": ("active", "params"),
    "params_nonembedding": ("non-embedding", "params"),
    "params_active_nonembedding": ("active non-emb.", "params"),
}


FINAL_COLUMNS = {
    "size": ("size", ""),
    "arm": ("arm", ""),
    "lr": ("lr", ""),
    "steps": ("steps", ""),
    "mean_loss": ("mean loss", "loss"),
    "std_loss": ("std", "loss"),
    "min_loss": ("min", "loss"),
    "max_loss": ("max", "loss"),
    "n": ("completed", ""),
    "n_excluded": ("excluded", ""),
}


REGRET_COLUMNS = {
    "parameter": ("parameter", ""),
    "parametrization": ("parametrization", ""),
    "size": ("size", ""),
    "reference_size": ("chosen at", ""),
    "chosen_factor": ("chosen factor", ""),
    "best_factor": ("best factor here", ""),
    "loss_at_chosen": ("loss at chosen", "loss"),
    "best_loss": ("best loss", "loss"),
    "regret": ("regret (nats)", "loss"),
    "n_shared": ("seeds compared", ""),
    "note": ("note", ""),
}


# The sweeps' tables: every number beside the health checks of its cell (`checks`, with_checks_text).
ABLATION_COLUMNS = {
    "size": ("size", ""),
    "kind": ("kind", ""),
    "component": ("component", ""),
    "reference_arm": ("reference arm", ""),
    "loss": ("loss", "loss"),
    "reference_loss": ("reference loss (same seeds)", "loss"),
    "delta": ("delta (seed-matched)", "loss"),
    "delta_ci_low": ("95% low", "loss"),
    "delta_ci_high": ("95% high", "loss"),
    "n_pairs": ("seed pairs", ""),
    "checks": ("health checks of its cell", ""),
    "note": ("note", ""),
}


USWEEP_COLUMNS = {
    "size": ("size", ""),
    "base_arm": ("arm", ""),
    "component": ("component", ""),
    "which": ("start / end", ""),
    "factor": ("factor", ""),
    "mean_loss_shared": ("loss (shared seeds)", "loss"),
    "n_shared": ("shared seeds", ""),
    "mean_loss": ("loss (all its seeds)", "loss"),
    "n": ("seeds", ""),
    "is_best": ("best", ""),
    "delta": ("vs factor 1 (seed-matched)", "loss"),
    "checks": ("health checks of its cell", ""),
}


TUNED_COLUMNS = {
    "size": ("tuning size", ""),
    "arm": ("arm", ""),
    "space": ("space", ""),
    "parameter": ("parameter", ""),
    "start_value": ("start", ""),
    "value": ("tuned", ""),
    "paper_value": ("paper", ""),
    "best_score": ("best score", "loss"),
    "runs_spent": ("runs", ""),
    "stop_reason": ("stopped", ""),
}


PROBLEM_COLUMNS = {
    "run_id": ("run", ""),
    "status": ("status", ""),
    "size": ("size", ""),
    "arm": ("arm", ""),
    "sweeps": ("sweeps", ""),
    "seed": ("seed", ""),
    "lr": ("lr", ""),
    "steps": ("steps", ""),
    "error": ("error", ""),
}


def multipliers_table(mult: pl.DataFrame) -> pl.DataFrame:
    """component x arm, cells 'start / end'."""
    if mult.is_empty():
        return mult
    return mult.with_columns(
        pl.format("{} / {}", pl.col("start").round(4), pl.col("end").round(4)).alias("cell")
    ).pivot(on="arm", index="component", values="cell")
