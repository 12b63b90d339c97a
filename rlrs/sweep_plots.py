"""The report's charts of the sweeps and the searches: final loss against
base lr, U-plots, ablations and the searches' progress (the conventions of
rlrs.plots)."""

from __future__ import annotations

import altair as alt
import polars as pl

from rlrs.plots import HEIGHT, LOSS_SCALE, WIDTH, legend_highlight


def lr_sweep(frame: pl.DataFrame) -> alt.Chart:
    """Figure 4: final loss against base lr per arm, one line per size; the
    lr each arm is compared at drawn larger. The loss is each point's mean
    over the seeds every point of its line has (what the best lr is chosen
    on); the mean over all its seeds is in the tooltip."""
    sel, opacity = legend_highlight("size")
    data = frame.select(
        "size",
        "arm",
        "lr",
        "lr_factor",
        "mean_loss_shared",
        "n_shared",
        "shared_seeds",
        "mean_loss",
        "std_loss",
        "n",
        "n_excluded",
        "is_best",
        "run_ids",
    )
    base = alt.Chart(data.filter(pl.col("mean_loss_shared").is_not_null()))
    enc = dict(
        x=alt.X("lr:Q", title="base learning rate", scale=alt.Scale(type="log")),
        y=alt.Y("mean_loss_shared:Q", title="final eval loss (mean over the shared seeds)", scale=LOSS_SCALE),
        color=alt.Color("size:N", sort=frame["size"].unique(maintain_order=True).to_list()),
        opacity=opacity,
    )
    line = base.mark_line().encode(**enc)
    pts = base.mark_point(filled=True).encode(
        **enc,
        size=alt.condition("datum.is_best", alt.value(160), alt.value(40)),
        tooltip=[
            "size:N",
            "arm:N",
            alt.Tooltip("lr:Q", format=".2e"),
            "lr_factor:Q",
            alt.Tooltip("mean_loss_shared:Q", format=".4f", title="mean loss, shared seeds"),
            alt.Tooltip("shared_seeds:N", title="shared seeds"),
            alt.Tooltip("mean_loss:Q", format=".4f", title="mean loss, all its seeds"),
            alt.Tooltip("std_loss:Q", format=".4f"),
            "n:Q",
            "n_excluded:Q",
            "is_best:N",
            "run_ids:N",
        ],
    )
    return (
        alt.layer(line, pts)
        .add_params(sel)
        .properties(width=WIDTH, height=HEIGHT)
        .facet(column=alt.Column("arm:N", title="arm"))
        .resolve_scale(y="independent")
        .properties(title="Base learning-rate sweep")
    )


def usweep(frame: pl.DataFrame) -> alt.Chart:
    """Figure 5: U-plots, final loss against one multiplier's factor (log x),
    one line per size, panels per component and start/end."""
    sel, opacity = legend_highlight("size")
    data = (
        frame.filter(pl.col("mean_loss_shared").is_not_null())
        .with_columns(pl.format("{}.{}", "component", "which").alias("parameter"))
        .select(
            "size",
            "parameter",
            "base_arm",
            "factor",
            "mean_loss_shared",
            "shared_seeds",
            "mean_loss",
            "std_loss",
            "n",
            "is_best",
            "run_ids",
            "failed_checks",
        )
    )
    base = alt.Chart(data)
    enc = dict(
        x=alt.X("factor:Q", title="multiplier factor", scale=alt.Scale(type="log")),
        y=alt.Y("mean_loss_shared:Q", title="final eval loss (shared seeds)", scale=LOSS_SCALE),
        color=alt.Color("size:N", sort=frame["size"].unique(maintain_order=True).to_list()),
        opacity=opacity,
    )
    line = base.mark_line().encode(**enc)
    pts = base.mark_point(filled=True).encode(
        **enc,
        size=alt.condition("datum.is_best", alt.value(150), alt.value(35)),
        tooltip=[
            "size:N",
            "parameter:N",
            "base_arm:N",
            "factor:Q",
            alt.Tooltip("mean_loss_shared:Q", format=".4f", title="mean loss, shared seeds"),
            alt.Tooltip("shared_seeds:N", title="shared seeds"),
            alt.Tooltip("mean_loss:Q", format=".4f", title="mean loss, all its seeds"),
            alt.Tooltip("std_loss:Q", format=".4f"),
            "n:Q",
            "is_best:N",
            "run_ids:N",
            alt.Tooltip("failed_checks:N", title="failed health checks"),
        ],
    )
    return (
        alt.layer(line, pts)
        .add_params(sel)
        .properties(width=WIDTH - 40, height=HEIGHT - 20)
        .facet(facet=alt.Facet("parameter:N", title=None), columns=4)
        .resolve_scale(y="independent")
        .properties(title="Sensitivity of each multiplier (U-plots)")
    )


def ablation(frame: pl.DataFrame) -> alt.Chart:
    """Figure 6: loss change per component, removal and contribution."""
    sel, opacity = legend_highlight("size")
    data = frame.filter(pl.col("delta").is_not_null()).select(
        "size",
        "kind",
        "component",
        "reference_arm",
        "delta",
        "loss",
        "reference_loss",
        "n",
        "n_reference",
        "failed_checks",
    )
    return (
        alt.Chart(data)
        .mark_bar()
        .encode(
            x=alt.X("component:N", title=None),
            xOffset=alt.XOffset("size:N", sort=frame["size"].unique(maintain_order=True).to_list()),
            y=alt.Y("delta:Q", title="loss change (nats/token)"),
            color=alt.Color("size:N", sort=frame["size"].unique(maintain_order=True).to_list()),
            opacity=opacity,
            tooltip=[
                "size:N",
                "kind:N",
                "component:N",
                "reference_arm:N",
                alt.Tooltip("delta:Q", format="+.4f"),
                alt.Tooltip("loss:Q", format=".4f"),
                alt.Tooltip("reference_loss:Q", format=".4f"),
                "n:Q",
                "n_reference:Q",
                alt.Tooltip("failed_checks:N", title="failed health checks"),
            ],
        )
        .add_params(sel)
        .properties(width=WIDTH + 40, height=HEIGHT)
        .facet(column=alt.Column("kind:N", title=None, sort=["removal", "contribution"]))
        .resolve_scale(y="independent")
        .properties(title="Ablations: one component at a time")
    )


def tune_progress(frame: pl.DataFrame) -> alt.Chart:
    """The searches: best score so far against runs spent, one line per arm,
    one panel per tuning size; every candidate's score as a faint point."""
    sel, opacity = legend_highlight("arm")
    data = frame.select(
        "size", "arm", "step", "pass", "parameter", "factor", "run_id", "score", "accepted", "best_score", "runs_spent"
    )
    base = alt.Chart(data)
    x = alt.X("runs_spent:Q", title="runs spent")
    y_scale = alt.Scale(zero=False)
    best = base.mark_line(interpolate="step-after", point=True).encode(
        x=x,
        y=alt.Y("best_score:Q", title="score (lower is better)", scale=y_scale),
        color=alt.Color("arm:N"),
        opacity=opacity,
        tooltip=["arm:N", "pass:Q", "parameter:N", "runs_spent:Q", alt.Tooltip("best_score:Q", format=".4f")],
    )
    tried = (
        base.transform_filter("isValid(datum.score)")
        .mark_point(size=18, opacity=0.35)
        .encode(
            x=x,
            y=alt.Y("score:Q", scale=y_scale),
            color="arm:N",
            tooltip=[
                "arm:N",
                "pass:Q",
                "parameter:N",
                alt.Tooltip("factor:Q", format=".3g"),
                "run_id:N",
                alt.Tooltip("score:Q", format=".4f"),
                "accepted:N",
            ],
        )
    )
    return (
        alt.layer(tried, best)
        .add_params(sel)
        .properties(width=WIDTH + 60, height=HEIGHT + 30)
        .facet(column=alt.Column("size:N", title="tuning size"))
        .resolve_scale(y="independent")
        .properties(title="Greedy local search: best score against runs spent")
    )


def lr_vs_width(frame: pl.DataFrame) -> alt.VConcatChart:
    """The best base lr against width (log-log), one line per (parametrization,
    arm), a panel per family; filled circles are bracketed lrs, hollow
    triangles unbracketed ones (the optimum may lie beyond the sweep). Below,
    the loss at that lr."""
    data = frame.filter(pl.col("lr").is_not_null()).with_columns(
        pl.when(pl.col("bracketed")).then(pl.lit("bracketed")).otherwise(pl.lit("unbracketed")).alias("lr_choice"),
        pl.format("{} · {}", "arm", "parametrization").alias("line"),
        pl.col("failed_checks").fill_null("none"),
    )
    widths = sorted(set(data["d_model"].drop_nulls().to_list()))
    x = alt.X(
        "d_model:Q", title="width d_model (log)", scale=alt.Scale(type="log", base=2), axis=alt.Axis(values=widths)
    )
    line_enc = dict(
        x=x,
        color=alt.Color("arm:N", title="arm"),
        strokeDash=alt.StrokeDash("parametrization:N", title="parametrization (line)"),
        detail="line:N",
    )
    point_enc = dict(
        x=x,
        color=alt.Color("arm:N", title="arm"),
        detail="line:N",
        shape=alt.Shape(
            "lr_choice:N",
            title="lr (point)",
            scale=alt.Scale(domain=["bracketed", "unbracketed"], range=["circle", "triangle-up"]),
            legend=alt.Legend(symbolFillColor="#666", symbolStrokeColor="#666", symbolOpacity=1),
        ),
        stroke=alt.Stroke("arm:N", legend=None),
        fillOpacity=alt.condition("datum.bracketed", alt.value(1.0), alt.value(0.0)),
        size=alt.value(80),
        tooltip=[
            "size:N",
            "arm:N",
            "parametrization:N",
            "d_model:Q",
            alt.Tooltip("lr:Q", format=".3g"),
            "lr_choice:N",
            "cap_reached:N",
            alt.Tooltip("grid_steps_from_base:Q", format="+.2f", title="sweep steps from the narrowest"),
            alt.Tooltip("mean_loss:Q", format=".4f"),
            "n:Q",
            "failed_checks:N",
        ],
    )

    def panel(y: alt.Y, rows: pl.DataFrame) -> alt.FacetChart:
        base = alt.Chart(rows)
        return (
            alt.layer(
                base.mark_line().encode(y=y, **line_enc),
                base.mark_point(filled=True, strokeWidth=1.5).encode(y=y, **point_enc),
            )
            .properties(width=WIDTH, height=HEIGHT)
            .facet(column=alt.Column("family:N", title="family"))
        )

    lr = panel(alt.Y("lr:Q", title="best base lr (log)", scale=alt.Scale(type="log")), data)
    loss = panel(
        alt.Y("mean_loss:Q", title="final eval loss at that lr", scale=LOSS_SCALE),
        data.filter(pl.col("mean_loss").is_not_null()),
    )
    return alt.vconcat(lr, loss).properties(title="Best base lr against width, and the loss at it")
