"""The report's protocol sections: the study's description, the health
checks, the headline table (a number whose qualifying checks fail is shown
under that failure, never as a headline), its footnotes, tuning fairness
and the lr choices. HTML strings from analysis frames; every value escaped."""

from __future__ import annotations

import polars as pl

from rlrs.analysis import health
from rlrs.report_text import esc, headline_rows, human, table

HEALTH_COLUMNS = {
    "check_name": ("check", ""),
    "where": ("scope", ""),
    "status": ("status", ""),
    "value": ("value", ""),
    "threshold": ("threshold", ""),
    "message": ("message", ""),
}
TUNING_COLUMNS = {
    "size": ("tuning size", ""),
    "arm": ("arm", ""),
    "space": ("space", ""),
    "max_runs": ("budget (max_runs)", ""),
    "run_budget": ("most runs it can spend", ""),
    "runs_spent": ("runs spent", ""),
    "passes": ("passes", ""),
    "max_passes": ("max passes", ""),
    "stop_reason": ("stopped", ""),
    "converged": ("converged", ""),
}
LR_COLUMNS = {
    "size": ("size", ""),
    "arm": ("arm", ""),
    "value": ("chosen lr", ""),
    "cell": ("lr choice", ""),
    "message": ("why", ""),
}
_STATUS_ORDER = {health.FAIL: 0, health.WARN: 1, health.PASS: 2}


def description(config: dict) -> str:
    text = config.get("description")
    return f'<p class="description" id="description">{esc(text)}</p>' if text else ""


def _where(r: dict) -> str:
    parts = [r["family"], r["size"], r["arm"]]
    return r["scope"] + (": " + " / ".join(p for p in parts if p) if r["scope"] != "study" else "")


def health_section(rows: pl.DataFrame) -> str:
    """Every check's rows: the failures in a table, then the warnings and
    passes (in that order) in a table under a <details> fold."""
    if rows.is_empty():
        return '<p class="missing">No health checks: the study has no compared cells yet.</p>'
    counts = {st: rows.filter(pl.col("status") == st).height for st in _STATUS_ORDER}
    ordered = rows.with_columns(
        pl.col("status").replace_strict(_STATUS_ORDER, default=3).alias("_o"),
        pl.struct(rows.columns).map_elements(_where, return_dtype=pl.Utf8).alias("where"),
    ).sort("_o", maintain_order=True)
    fails, rest = ordered.filter(pl.col("status") == health.FAIL), ordered.filter(pl.col("status") != health.FAIL)
    head = (
        f"<p>{counts['fail']} failed, {counts['warn']} warned, {counts['pass']} passed (spec section 3; thresholds "
        "are the study's <code>health:</code> settings). A number whose checks fail is shown under that failure "
        "below, not in the headline.</p>"
    )
    failed = table(fails, HEALTH_COLUMNS, cls="health") if fails.height else "<p>No check failed.</p>"
    folded = (
        f'<details id="health-rest"><summary>{counts["warn"]} warning(s) and {counts["pass"]} pass(es)</summary>'
        + table(rest, HEALTH_COLUMNS, cls="health-rest")
        + "</details>"
        if rest.height
        else ""
    )
    return head + failed + folded


def _pct(x) -> str:
    return f"{x * 100:+.1f}%"


def speedup_text(r: dict) -> str:
    if r["speedup"] is not None:
        lo, hi = r["ci_low"], r["ci_high"]
        ci = (
            f" [{_pct(lo) if lo is not None else '…'}, {_pct(hi) if hi is not None else '…'}]"
            if r["method"] != "point"
            else ""
        )
        return f"{_pct(r['speedup'])}{ci} ({r['definition']}, {r['method']}, n={r['n_pairs']})"
    if r["bound"] is not None:
        return f"bound {r['bound']} ({r['definition']}; outside the baseline's runs, not extrapolated)"
    return "—"


def gap_text(r: dict) -> str:
    if r.get("loss_gap") is None:
        return "—"
    lo, hi = r.get("loss_gap_ci_low"), r.get("loss_gap_ci_high")
    ci = f" [{lo:+.3f}, {hi:+.3f}]" if lo is not None and hi is not None else ""
    return f"{r['loss_gap']:+.3f} nats{ci} ({r.get('loss_gap_method')}, n={r.get('loss_gap_n_pairs')})"


def headline_sections(speedup: pl.DataFrame, rows: pl.DataFrame) -> tuple[str, str, str]:
    """(headline table, numbers under failed checks, footnotes); `speedup`:
    the speedup view, whose *_blocked_by columns say which number a failed
    check blocks; `rows`: the health rows (the table's health column)."""
    if speedup.is_empty():
        missing = '<p class="missing">No speedup: the study has no completed non-baseline arm next to a completed baseline.</p>'
        return missing, "", ""
    head, blocked, notes = [], [], []
    for r in headline_rows(speedup):
        cover = health.covering(rows, r["size"], r["arm"], family=r["family"])
        cells = {}
        for estimate, text in (("speedup", speedup_text(r)), ("loss_gap", gap_text(r))):
            # the analysis' decision (health.with_blocking), the one the figures read too
            blocked_by = r[health.BLOCKED_BY[estimate]]
            fails = blocked_by.split(", ") if blocked_by else []
            if fails and text != "—":
                why = "; ".join(x["message"] for x in cover if x["check_name"] in fails and x["status"] == health.FAIL)
                blocked.append(
                    {
                        "size": r["size"],
                        "arm": r["arm"],
                        "estimate": estimate,
                        "number": text,
                        "failed": ", ".join(fails),
                        "why": why,
                    }
                )
                cells[estimate] = f"blocked by {', '.join(fails)}"
            else:
                cells[estimate] = text
        order = {c.name: i for i, c in enumerate(health.CHECKS)}
        warned = sorted({x["check_name"] for x in cover if x["status"] == health.WARN}, key=order.get)
        failed = sorted({x["check_name"] for x in cover if x["status"] == health.FAIL}, key=order.get)
        mark = ""
        if r["note"]:
            notes.append(r["note"])
            mark = f" [{len(notes)}]"
        head.append(
            {
                "size": r["size"] + mark,
                "params": f"{human(r['params_nonembedding'])} non-emb. ({human(r['params_active_nonembedding'])} active)",
                "arm": r["arm"],
                "speedup": cells["speedup"],
                "loss_gap": cells["loss_gap"],
                "health": ("fail: " + ", ".join(failed) if failed else "no failed check")
                + (f"; warn: {', '.join(warned)}" if warned else ""),
            }
        )
    cols = {
        "size": ("size", ""),
        "params": ("parameters", ""),
        "arm": ("arm", ""),
        "speedup": ("speedup T*/T-1 and 95% CI", ""),
        "loss_gap": ("loss gap and 95% CI", ""),
        "health": ("health", ""),
    }
    headline = table(pl.DataFrame(head), cols).replace("<table ", '<table id="headline" ', 1)
    blocked_html = ""
    if blocked:
        bcols = {
            "size": ("size", ""),
            "arm": ("arm", ""),
            "estimate": ("estimate", ""),
            "number": ("number", ""),
            "failed": ("failed checks", ""),
            "why": ("why", ""),
        }
        blocked_html = (
            "<h3>Numbers under failed checks</h3><p>Computed correctly, but a check that qualifies them failed: "
            "they do not answer the study's question until the failure is fixed.</p>"
            + table(pl.DataFrame(blocked), bcols).replace("<table ", '<table id="blocked" ', 1)
        )
    foot = "".join(f"<li>{esc(n)}.</li>" for n in notes)
    return headline, blocked_html, f'<ol class="note footnotes" id="footnotes">{foot}</ol>' if foot else ""


def tuning_section(budgets: pl.DataFrame) -> str:
    if budgets.is_empty():
        return ""
    return (
        "<h3>Tuning fairness</h3><p>Each search's run budget, the runs it spent, its passes, and whether it "
        "converged (a pass brought no improvement) or stopped at a cap: arms compared after unequal searches "
        "are not compared fairly.</p>" + table(budgets, TUNING_COLUMNS)
    )


def lr_choice_section(rows: pl.DataFrame) -> str:
    lr = rows.filter(pl.col("check_name") == "lr_bracketed")
    if lr.is_empty():
        return ""
    lr = lr.with_columns(
        pl.when(pl.col("status") == health.PASS)
        .then(pl.lit("bracketed"))
        .when(pl.col("value").is_null())
        .then(pl.lit("failed: no lr trained"))
        .otherwise(pl.lit("unbracketed"))
        .alias("cell")
    )
    return (
        "<h3>lr choices</h3><p>Each compared cell's lr: bracketed when a swept point on each side of it is worse "
        "(the stage-1 selection's result where the study has one, else its lr sweep as run); failed when no lr "
        "trained (every point diverged), so that size is not measured.</p>" + table(lr, LR_COLUMNS)
    )


LR_WIDTH_COLUMNS = {
    "family": ("family", ""),
    "parametrization": ("parametrization", ""),
    "arm": ("arm", ""),
    "size": ("size", ""),
    "d_model": ("d_model", ""),
    "lr_text": ("best base lr", ""),
    "moved": ("sweep steps from the narrowest", ""),
    "loss_text": ("loss at it", ""),
    "checks": ("failed checks", ""),
}


def _lr_text(r: dict) -> str:
    if r["lr"] is None:
        return "— (" + (r["note"] or "no lr") + ")"
    if r["bracketed"]:
        return f"{r['lr']:.3g} (bracketed)"
    why = (
        "only lr run" if r["n_points"] == 1 else "at the sweep's edge" + (" after the cap" if r["cap_reached"] else "")
    )
    return f"{r['lr']:.3g} (UNBRACKETED: {why}; check lr_bracketed fails)"


def _loss_text(r: dict) -> str:
    if r["mean_loss"] is None:
        return "— (" + (r["note"] or "no completed run") + ")"
    sd = f" ± {r['std_loss']:.4f}" if r["std_loss"] is not None else ""
    failed = f"; fails: {r['failed_checks']}" if r["failed_checks"] else ""
    return f"{r['mean_loss']:.4f}{sd} ({r['loss_source']}, n={r['n']}{failed})"


def lr_width_section(frame: pl.DataFrame) -> str:
    """The lr-vs-width numbers, each beside the checks that fail for its cell."""
    if frame.is_empty():
        return ""
    rows = frame.with_columns(
        pl.struct(frame.columns).map_elements(_lr_text, return_dtype=pl.Utf8).alias("lr_text"),
        pl.struct(frame.columns).map_elements(_loss_text, return_dtype=pl.Utf8).alias("loss_text"),
        pl.col("grid_steps_from_base").map_elements(lambda v: f"{v:+.2f}", return_dtype=pl.Utf8).alias("moved"),
        pl.col("failed_checks").fill_null("none").alias("checks"),
    )
    return (
        '<h3 id="lr-width-table">Best base lr against width</h3><p>Per family, parametrization and arm, narrowest '
        "width first: the lr each size chose (bracketed: a swept point on each side was worse), how many sweep "
        "steps it lies from the narrowest width's lr (0: the optimum stayed put; under muP it should, under sp it "
        "moves), and the mean final loss at it. A number whose cell fails a health check says which, beside it.</p>"
        + table(rows, LR_WIDTH_COLUMNS, cls="lr-width")
    )


def not_measured(rows: pl.DataFrame) -> str:
    """A line under the headline for each cell whose lr selection chose no
    lr (check 2's rows without a value): its size has no numbers."""
    failed = rows.filter((pl.col("check_name") == "lr_bracketed") & pl.col("value").is_null())
    if failed.is_empty():
        return ""
    items = "".join(
        f"<li>{esc(r['size'])} ({esc(r['arm'])}): {esc(r['message'])}.</li>" for r in failed.iter_rows(named=True)
    )
    return f'<div class="missing" id="not-measured">Not measured (no lr to compare at):<ul>{items}</ul></div>'
