"""The report's words and tables: HTML escaping, number formats, the
headline sentences and the HTML tables, from analysis frames. No charts,
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


def headline(r: dict) -> str:
    """One sentence for one (size, arm) speedup row; plain text (escape it)."""
    where = f"At {r['size']} ({human(r['params_nonembedding'])} non-embedding params)"
    defn = f"{r['definition']} definition"
    seeds = f"{r['n_seeds']} seed{'s' if r['n_seeds'] != 1 else ''}"
    if r["speedup"] is not None:
        saved = r["saved"]
        if saved >= 0:
            main = f"{r['arm']} reaches the baseline's final loss with {pct(saved)} fewer steps"
            details = [f"the baseline needs {pct(r['speedup'])} more"]
        else:
            # T/T* - 1: how many more steps the arm spends than the baseline needs.
            main = f"{r['arm']} needs {pct(1 / (1 + r['speedup']) - 1)} more steps than the baseline to reach the same loss"
            details = []
        lo, hi = r["saved_ci_low"], r["saved_ci_high"]
        if lo is not None and hi is not None:
            ci = f"95% CI {_signed_saved(lo)} to {_signed_saved(hi)}"
        elif lo is not None or hi is not None:
            ci = "95% CI " + (
                f"from {_signed_saved(lo)} to beyond the baseline runs"
                if lo is not None
                else f"from below the baseline runs to {_signed_saved(hi)}"
            )
        else:
            ci = "no interval"
        return f"{where} {main} ({'; '.join(details + [f'{ci}, {seeds}', defn])})."
    if r["bound"] is not None:
        edge, steps = r["bound_value"], r["steps"]
        edge_run = f"{steps * (1 + edge):.0f} steps, {1 + edge:.2f}x its {steps}"
        if r["bound"].startswith(">"):
            return (
                f"{where} {r['arm']} ends below even the baseline's longest run ({edge_run}): the baseline "
                f"would need more than {pct(edge)} more steps; not extrapolated ({seeds}; {defn})."
            )
        return (
            f"{where} {r['arm']} ends above even the baseline's shortest run ({edge_run}): speedup below "
            f"{edge:+.0%}; not extrapolated ({seeds}; {defn})."
        )
    return f"{where} no {defn} speedup for {r['arm']}: {r['note'] or 'no data'}."


def gap_sentence(r: dict) -> str:
    """The final-loss gap at equal steps, each arm at its best lr (plain text)."""
    if r.get("loss_gap") is None:
        return ""
    lo, hi = r.get("loss_gap_ci_low"), r.get("loss_gap_ci_high")
    ci = f", 95% CI {lo:.3f} to {hi:.3f}" if lo is not None and hi is not None else ", no interval"
    word = "lower" if r["loss_gap"] >= 0 else "higher"
    return (
        f" At {r['steps']} steps its final eval loss is {abs(r['loss_gap']):.3f} nats {word} than the "
        f"baseline's ({r['arm_loss']:.3f} vs {r['baseline_loss']:.3f}{ci})."
    )


def caveat(r: dict) -> str:
    """The row's notes under its sentence (a sentence without a number already quotes them)."""
    if r["note"] and (r["speedup"] is not None or r["bound"] is not None):
        return f'<br><span class="note">Note: {esc(r["note"])}.</span>'
    return ""


def _signed_saved(x: float) -> str:
    return f"{pct(x)} fewer" if x >= 0 else f"{pct(x)} more"


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
    "size": ("size", ""),
    "reference_size": ("chosen at", ""),
    "chosen_factor": ("chosen factor", ""),
    "best_factor": ("best factor here", ""),
    "loss_at_chosen": ("loss at chosen", "loss"),
    "best_loss": ("best loss", "loss"),
    "regret": ("regret (nats)", "loss"),
    "note": ("note", ""),
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
