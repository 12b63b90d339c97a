"""One function per report figure: an analysis frame in, an Altair chart out.

No numbers are computed here beyond what a chart needs to place marks (the
frames come aggregated and downsampled from rlrs.analysis, so no chart
exceeds Altair's 5,000-row limit). Captions live with the page (rlrs.report).
Legends are clickable wherever lines overlap: clicking an entry highlights
it, shift-click adds more.
"""

from __future__ import annotations

import altair as alt
import polars as pl

WIDTH, HEIGHT = 230, 170
FACET_COLUMNS = 3
LOSS_SCALE = alt.Scale(zero=False)


def legend_highlight(field: str) -> tuple[alt.Parameter, alt.OpacityValue]:
    """A legend-bound selection and the opacity that fades the unselected."""
    sel = alt.selection_point(fields=[field], bind="legend")
    return sel, alt.condition(sel, alt.value(1.0), alt.value(0.15))


def lr_schedules(frame: pl.DataFrame) -> alt.Chart:
    """Figure 1: lr_g(t) per component, one line per arm (dash per size
    when the study has dense and MoE sizes)."""
    sel, opacity = legend_highlight("arm")
    sizes = frame["size"].unique(maintain_order=True).to_list()
    enc = dict(
        x=alt.X("step:Q", title="step"),
        y=alt.Y("lr:Q", title="learning rate", axis=alt.Axis(format=".1e")),
        color=alt.Color("arm:N", title="arm"),
        opacity=opacity,
        tooltip=["size:N", "arm:N", "component:N", "step:Q", alt.Tooltip("lr:Q", format=".3e"), "run_id:N"],
    )
    if len(sizes) > 1:
        enc["strokeDash"] = alt.StrokeDash("size:N", sort=sizes)
    return (
        alt.Chart(frame.select("size", "arm", "component", "step", "lr", "run_id"))
        .mark_line(clip=True)
        .encode(**enc)
        .add_params(sel)
        .properties(width=WIDTH, height=HEIGHT)
        .facet(facet=alt.Facet("component:N", title=None), columns=FACET_COLUMNS)
        .resolve_scale(y="independent")
        .properties(title=alt.TitleParams("Per-component learning rate", subtitle=f"at {', '.join(sizes)}"))
    )


def loss_curves(curves: pl.DataFrame, speedup: pl.DataFrame) -> alt.Chart:
    """Figure 2: train loss (lines) and eval loss (points) per size, with the
    step where the baseline's eval curve reaches each arm's final loss."""
    # One legend (shared colour scale) drives one selection across all panels.
    sel, opacity = legend_highlight("label")
    panels = []
    for size in curves["size"].unique(maintain_order=True).to_list():
        part = curves.filter(pl.col("size") == size)
        panels.append(_loss_panel(size, part, speedup.filter(pl.col("size") == size), opacity))
    # Defined in one panel, the selection is still global: every panel's
    # opacity reads it. (Adding it to each panel makes Altair deduplicate.)
    panels[0] = panels[0].add_params(sel)
    return alt.concat(*panels, columns=2).properties(title="Loss curves per model size")


def _loss_panel(size: str, part: pl.DataFrame, speedup: pl.DataFrame, opacity) -> alt.LayerChart:
    # Early steps sit far above the final losses: cut the y range at the
    # highest loss after the first 10% of training so differences show.
    late = part.filter(pl.col("step") >= 0.1 * part["step"].max())
    losses = pl.concat([late["train_loss"], late["eval_loss"]]).drop_nulls()
    lo, hi = (float(losses.min()), float(losses.max())) if len(losses) else (None, None)
    y = alt.Y(
        "loss:Q",
        title="loss (nats/token)",
        scale=alt.Scale(zero=False, domain=[lo - 0.02 * (hi - lo), hi]) if lo is not None and hi > lo else LOSS_SCALE,
    )
    base = alt.Chart(part.select("label", "step", "train_loss", "eval_loss", "n_runs", "run_ids"))
    color = alt.Color("label:N", title="run group")
    train = (
        base.transform_filter("isValid(datum.train_loss)")
        .transform_calculate(loss="datum.train_loss")
        .mark_line(clip=True, strokeWidth=1.2)
        .encode(
            x=alt.X("step:Q", title="step"),
            y=y,
            color=color,
            opacity=opacity,
            tooltip=["label:N", "step:Q", alt.Tooltip("train_loss:Q", format=".4f"), "n_runs:Q"],
        )
    )
    evals = (
        base.transform_filter("isValid(datum.eval_loss)")
        .transform_calculate(loss="datum.eval_loss")
        .mark_point(clip=True, filled=True, size=28)
        .encode(
            x="step:Q",
            y=y,
            color=color,
            opacity=opacity,
            tooltip=["label:N", "step:Q", alt.Tooltip("eval_loss:Q", format=".4f"), "n_runs:Q", "run_ids:N"],
        )
    )
    layers = [train, evals]
    subtitle = []
    for r in speedup.iter_rows(named=True):
        subtitle.append(_speedup_text(r))
    reach = speedup.filter((pl.col("definition") == "target") & pl.col("t_star").is_not_null())
    if not reach.is_empty():
        marks = reach.select("arm", pl.col("t_star").alias("step"), pl.col("arm_loss").alias("loss"), "speedup")
        layers.append(
            alt.Chart(marks)
            .mark_point(shape="cross", size=140, color="black", strokeWidth=2, clip=True)
            .encode(
                x="step:Q",
                y=y,
                tooltip=[
                    alt.Tooltip("arm:N", title="baseline reaches the final loss of"),
                    alt.Tooltip("step:Q", format=".0f"),
                    alt.Tooltip("loss:Q", format=".4f"),
                    alt.Tooltip("speedup:Q", format="+.1%", title="target speedup"),
                ],
            )
        )
    return alt.layer(*layers).properties(
        width=2 * WIDTH, height=int(1.3 * HEIGHT), title=alt.TitleParams(size, subtitle=subtitle or "")
    )


def _speedup_text(r: dict) -> str:
    """'rlrs, ladder: +20% steps (95% CI +17% to +23%)' or its bound."""
    head = f"{r['arm']}, {r['definition']}: "
    if r["speedup"] is not None:
        ci = (
            f" (95% CI {r['ci_low']:+.0%} to {r['ci_high']:+.0%})"
            if r["ci_low"] is not None and r["ci_high"] is not None
            else ""
        )
        return head + f"baseline needs {r['speedup']:+.0%} steps{ci}"
    if r["bound"] is not None:
        return (
            head + f"baseline needs {r['bound'][0]} {r['bound_value']:+.0%} steps (outside its runs: not extrapolated)"
        )
    return head + "no estimate"


def speedup_vs_size(frame: pl.DataFrame) -> alt.Chart:
    """Figure 3: speedup (T*/T - 1) against non-embedding parameters, log x,
    95% intervals as bars; bounds drawn as triangles at the edge they pass."""
    data = (
        frame.filter(pl.col("speedup").is_not_null() | pl.col("bound").is_not_null())
        .with_columns(
            pl.coalesce("speedup", "bound_value").alias("y"),
            pl.when(pl.col("speedup").is_not_null())
            .then(pl.lit("estimate"))
            .when(pl.col("bound").str.starts_with(">"))
            .then(pl.lit("at least (beyond longest baseline)"))
            .otherwise(pl.lit("at most (below shortest baseline)"))
            .alias("kind"),
            pl.coalesce("bound", pl.col("speedup").round(3).cast(pl.Utf8)).alias("value"),
            pl.format("{} ({})", "arm", "family").alias("line"),
        )
        .select(
            "size",
            "arm",
            "family",
            "line",
            "definition",
            "params_nonembedding",
            "y",
            "ci_low",
            "ci_high",
            "kind",
            "value",
            "n_seeds",
        )
    )
    sel, opacity = legend_highlight("arm")
    x = alt.X(
        "params_nonembedding:Q",
        title="non-embedding parameters",
        scale=alt.Scale(type="log"),
        axis=alt.Axis(format="~s"),
    )
    base = alt.Chart(data)
    points = base.mark_point(filled=True, size=80).encode(
        x=x,
        y=alt.Y("y:Q", title="speedup T*/T - 1", axis=alt.Axis(format="%")),
        color=alt.Color("arm:N"),
        opacity=opacity,
        shape=alt.Shape(
            "kind:N",
            title="point",
            scale=alt.Scale(
                domain=["estimate", "at least (beyond longest baseline)", "at most (below shortest baseline)"],
                range=["circle", "triangle-up", "triangle-down"],
            ),
        ),
        tooltip=[
            "size:N",
            "arm:N",
            "family:N",
            "definition:N",
            "params_nonembedding:Q",
            "value:N",
            alt.Tooltip("ci_low:Q", format="+.1%"),
            alt.Tooltip("ci_high:Q", format="+.1%"),
            "n_seeds:Q",
        ],
    )
    # Lines join sizes of one family (dense or MoE) only: across families the
    # x axis is not one scaling direction.
    lines = (
        base.transform_filter("datum.kind == 'estimate'")
        .mark_line()
        .encode(
            x=x,
            y="y:Q",
            color="arm:N",
            detail="line:N",
            opacity=opacity,
            strokeDash=alt.StrokeDash(
                "family:N", title="family", scale=alt.Scale(domain=["dense", "moe"], range=[[1, 0], [5, 3]])
            ),
        )
    )
    bars = (
        base.transform_filter("isValid(datum.ci_low) && isValid(datum.ci_high)")
        .mark_rule(strokeWidth=2)
        .encode(x=x, y="ci_low:Q", y2="ci_high:Q", color="arm:N", opacity=opacity)
    )
    zero = base.mark_rule(color="gray", strokeDash=[2, 2]).encode(y=alt.datum(0))
    return (
        alt.layer(zero, bars, lines, points)
        .add_params(sel)
        .properties(width=WIDTH + 60, height=HEIGHT + 30)
        .facet(column=alt.Column("definition:N", title="speedup definition"))
        .properties(title="Speedup against model size (tuned small, applied large)")
    )


def loss_gap_vs_size(frame: pl.DataFrame) -> alt.Chart:
    """Baseline minus arm final eval loss at equal steps (each at its best lr)
    against non-embedding parameters, log x, 95% intervals as bars: how far
    ahead each arm is, also where the speedup is only a bound."""
    data = (
        frame.filter((pl.col("definition") == "ladder") & pl.col("loss_gap").is_not_null())
        .with_columns(
            pl.format("{} ({})", "arm", "family").alias("line"),
        )
        .select(
            "size",
            "arm",
            "family",
            "line",
            "params_nonembedding",
            "loss_gap",
            "loss_gap_ci_low",
            "loss_gap_ci_high",
            "arm_loss",
            "baseline_loss",
            "n_seeds",
            "steps",
        )
    )
    sel, opacity = legend_highlight("arm")
    x = alt.X(
        "params_nonembedding:Q",
        title="non-embedding parameters",
        scale=alt.Scale(type="log"),
        axis=alt.Axis(format="~s"),
    )
    base = alt.Chart(data)
    points = base.mark_point(filled=True, size=80).encode(
        x=x,
        y=alt.Y("loss_gap:Q", title="baseline loss - arm loss (nats)"),
        color=alt.Color("arm:N"),
        opacity=opacity,
        shape=alt.Shape("family:N", title="family"),
        tooltip=[
            "size:N",
            "arm:N",
            "family:N",
            "params_nonembedding:Q",
            "steps:Q",
            alt.Tooltip("loss_gap:Q", format=".4f"),
            alt.Tooltip("loss_gap_ci_low:Q", format=".4f"),
            alt.Tooltip("loss_gap_ci_high:Q", format=".4f"),
            alt.Tooltip("arm_loss:Q", format=".4f"),
            alt.Tooltip("baseline_loss:Q", format=".4f"),
            "n_seeds:Q",
        ],
    )
    lines = base.mark_line().encode(
        x=x,
        y="loss_gap:Q",
        color="arm:N",
        detail="line:N",
        opacity=opacity,
        strokeDash=alt.StrokeDash(
            "family:N", legend=None, scale=alt.Scale(domain=["dense", "moe"], range=[[1, 0], [5, 3]])
        ),
    )
    bars = (
        base.transform_filter("isValid(datum.loss_gap_ci_low) && isValid(datum.loss_gap_ci_high)")
        .mark_rule(strokeWidth=2)
        .encode(x=x, y="loss_gap_ci_low:Q", y2="loss_gap_ci_high:Q", color="arm:N", opacity=opacity)
    )
    zero = base.mark_rule(color="gray", strokeDash=[2, 2]).encode(y=alt.datum(0))
    return (
        alt.layer(zero, bars, lines, points)
        .add_params(sel)
        .properties(
            width=WIDTH + 60,
            height=HEIGHT + 30,
            title="Final-loss gap against model size (same steps, each arm at its best lr)",
        )
    )


def update_sizes(frame: pl.DataFrame) -> alt.Chart:
    """Figure 7 (the paper's Figure 1): relative update size per component
    over training, log y, one line per arm (dash per size)."""
    sel, opacity = legend_highlight("arm")
    multi_size = frame["size"].n_unique() > 1
    enc = dict(
        x=alt.X("step:Q", title="step"),
        y=alt.Y("update:Q", title="||ΔW|| / ||W|| per step", scale=alt.Scale(type="log")),
        color=alt.Color("arm:N"),
        opacity=opacity,
        tooltip=["size:N", "arm:N", "component:N", "step:Q", alt.Tooltip("update:Q", format=".2e"), "n_runs:Q"],
    )
    if multi_size:
        enc["strokeDash"] = alt.StrokeDash("size:N", sort=frame["size"].unique(maintain_order=True).to_list())
    return (
        alt.Chart(frame.filter(pl.col("update") > 0).select("size", "arm", "component", "step", "update", "n_runs"))
        .mark_line(clip=True)
        .encode(**enc)
        .add_params(sel)
        .properties(width=WIDTH, height=HEIGHT)
        .facet(facet=alt.Facet("component:N", title=None), columns=FACET_COLUMNS)
        .properties(title="Relative update size per component")
    )
