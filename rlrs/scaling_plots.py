"""The scaling-law figures: the frames of rlrs.analysis.scaling in, Altair
charts out (one panel per fit: law, model family and fixed E or G). Nothing
is computed here beyond the panel labels; the fitted values, frontiers,
iso-loss lines and multipliers come from the analysis."""

from __future__ import annotations

import altair as alt
import polars as pl

from rlrs.plots import ARM_PALETTE, BLOCKED, HEIGHT, VALID, WIDTH, legend_highlight, validity

LOG = alt.Scale(type="log")
COLUMNS = 3


def with_panel(frame: pl.DataFrame) -> pl.DataFrame:
    """A `panel` label per fit: 'chinchilla · dense', 'joint_moe · moe · G=1'."""
    shape = [
        pl.when(pl.col(c).is_not_null())
        .then(pl.lit(f" · {s}=") + pl.col(c).round(3).cast(pl.Utf8))
        .otherwise(pl.lit(""))
        for c, s in (("experts", "E"), ("granularity", "G"))
    ]
    return frame.with_columns(
        panel=pl.concat_str([pl.col("law"), pl.lit(" · "), pl.col("family"), *shape])
        + pl.lit(" (N: ")
        + pl.col("n_kind")
        + pl.lit(")")
    )


def observed_vs_fitted(points: pl.DataFrame) -> alt.FacetChart:
    """Each run's final loss against the fitted law's value (y = x: a perfect
    fit); held-out runs (the extrapolation set) drawn as crosses."""
    data = with_panel(points).with_columns(
        point=pl.when(pl.col("held_out")).then(pl.lit("held out")).otherwise(pl.lit("fitted"))
    )
    sel, opacity = legend_highlight("arm")
    base = alt.Chart().encode(x=alt.X("fitted:Q", title="fitted loss", scale=alt.Scale(zero=False)))
    diagonal = base.mark_line(color="#999", strokeDash=[3, 3]).encode(y="fitted:Q")
    dots = (
        base.mark_point(filled=True, size=45)
        .encode(
            y=alt.Y("loss:Q", title="observed final eval loss", scale=alt.Scale(zero=False)),
            color=alt.Color("arm:N", title="arm"),
            shape=alt.Shape(
                "point:N", title="point", scale=alt.Scale(domain=["fitted", "held out"], range=["circle", "cross"])
            ),
            opacity=opacity,
            tooltip=[
                "arm:N",
                "run_id:N",
                "n_params:Q",
                "tokens:Q",
                alt.Tooltip("loss:Q", format=".4f"),
                alt.Tooltip("fitted:Q", format=".4f"),
                "held_out:N",
                alt.Tooltip("failed_checks:N", title="failed health checks"),
            ],
        )
        .add_params(sel)
    )
    return (
        alt.layer(diagonal, dots, data=data)
        .properties(width=WIDTH, height=HEIGHT)
        .facet(facet=alt.Facet("panel:N", title=None), columns=COLUMNS)
        .resolve_scale(x="independent", y="independent")
    )


def both_bounds(low: str, high: str):
    """A band only where both ends of its interval are defined (one end can
    be undefined alone: rlrs.analysis.scaling.fit.percentile_interval)."""
    return alt.expr.isValid(alt.datum[low]) & alt.expr.isValid(alt.datum[high])


def loss_vs_compute(points: pl.DataFrame, frontier: pl.DataFrame) -> alt.FacetChart:
    """The runs' losses against their compute 6 N D, with each arm's fitted
    compute-optimal frontier and its band (dashed: beyond the fitted compute)."""
    data = pl.concat(
        [
            with_panel(points).select("panel", "arm", "compute", "loss", "held_out").with_columns(kind=pl.lit("run")),
            with_panel(frontier)
            .select("panel", "arm", "compute", "loss", "loss_low", "loss_high", "extrapolated")
            .with_columns(kind=pl.lit("frontier")),
        ],
        how="diagonal",
    )
    sel, opacity = legend_highlight("arm")
    x = alt.X("compute:Q", title="compute C = 6ND (FLOPs)", scale=LOG)
    y = alt.Y("loss:Q", title="final eval loss", scale=alt.Scale(zero=False))
    is_frontier = alt.datum.kind == "frontier"
    band = (
        alt.Chart()
        .transform_filter(is_frontier & both_bounds("loss_low", "loss_high"))
        .mark_area(opacity=0.15)
        .encode(x=x, y="loss_low:Q", y2="loss_high:Q", color="arm:N")
    )
    line = (
        alt.Chart()
        .transform_filter(is_frontier)
        .mark_line()
        .encode(
            x=x,
            y=y,
            color=alt.Color("arm:N", title="arm"),
            opacity=opacity,
            strokeDash=alt.StrokeDash(
                "extrapolated:N", title="extrapolated", scale=alt.Scale(domain=[False, True], range=[[1, 0], [4, 3]])
            ),
        )
    )
    dots = (
        alt.Chart()
        .transform_filter(alt.datum.kind == "run")
        .mark_point(filled=True, size=35)
        .encode(
            x=x,
            y=y,
            color="arm:N",
            opacity=opacity,
            tooltip=[
                "arm:N",
                alt.Tooltip("compute:Q", format=".3e"),
                alt.Tooltip("loss:Q", format=".4f"),
                "held_out:N",
            ],
        )
    )
    return (
        alt.layer(band, line, dots, data=data)
        .add_params(sel)
        .properties(width=WIDTH, height=HEIGHT)
        .facet(facet=alt.Facet("panel:N", title=None), columns=COLUMNS)
        .resolve_scale(y="independent")
    )


def iso_loss(iso: pl.DataFrame, frontier: pl.DataFrame, points: pl.DataFrame) -> alt.VConcatChart:
    """Iso-loss contours of each fit in (N, D), one panel per (fit, arm): the
    lines of equal fitted loss, the compute-optimal allocation (black) and
    the runs (grey)."""
    data = pl.concat(
        [
            with_panel(iso).select("panel", "arm", "n_params", "tokens", "level").with_columns(kind=pl.lit("iso")),
            with_panel(frontier)
            .select("panel", "arm", n_params="n_opt", tokens="d_opt")
            .with_columns(kind=pl.lit("opt")),
            with_panel(points).select("panel", "arm", "n_params", "tokens").with_columns(kind=pl.lit("run")),
        ],
        how="diagonal",
    ).with_columns(panel=pl.col("panel") + pl.lit(" · ") + pl.col("arm"))
    x = alt.X("n_params:Q", title="parameters N", scale=LOG)
    y = alt.Y("tokens:Q", title="tokens D", scale=LOG)
    lines = (
        alt.Chart()
        .transform_filter(alt.datum.kind == "iso")
        .mark_line()
        .encode(
            x=x,
            y=y,
            detail="level:N",
            color=alt.Color("level:Q", title="loss", scale=alt.Scale(scheme="viridis")),
            order="n_params:Q",
            tooltip=[alt.Tooltip("level:Q", format=".3f")],
        )
    )
    opt = (
        alt.Chart()
        .transform_filter(alt.datum.kind == "opt")
        .mark_line(color="black")
        .encode(x=x, y=y, order="n_params:Q")
    )
    runs = alt.Chart().transform_filter(alt.datum.kind == "run").mark_point(color="#777").encode(x=x, y=y)
    return (
        alt.layer(lines, opt, runs, data=data)
        .properties(width=WIDTH, height=HEIGHT)
        .facet(facet=alt.Facet("panel:N", title=None), columns=COLUMNS)
    )


def multiplier_vs_compute(mult: pl.DataFrame) -> alt.FacetChart:
    """Each arm's compute multiplier over the baseline against the baseline's
    compute, with its bootstrap band; dashed where extrapolated; its points
    hollow where a health check of either fit's runs fails (the analysis'
    failed_checks: BLOCKED in the legend, as the study's figures draw it)."""
    data = with_panel(mult).with_columns(*validity("failed_checks"))
    arms = sorted(data["arm"].unique().to_list())
    palette = [ARM_PALETTE[i % len(ARM_PALETTE)] for i in range(len(arms))]
    color = alt.Color("arm:N", title="arm", scale=alt.Scale(domain=arms, range=palette))
    sel, opacity = legend_highlight("arm")
    x = alt.X("compute:Q", title="baseline compute C (FLOPs)", scale=LOG)
    y = alt.Y("multiplier:Q", title="compute multiplier (baseline C / arm C)", scale=alt.Scale(type="symlog"))
    band = (
        alt.Chart()
        .transform_filter(both_bounds("ci_low", "ci_high"))
        .mark_area(opacity=0.18)
        .encode(x=x, y="ci_low:Q", y2="ci_high:Q", color=color)
    )
    line = (
        alt.Chart()
        .mark_line()
        .encode(
            x=x,
            y=y,
            color=color,
            opacity=opacity,
            strokeDash=alt.StrokeDash(
                "extrapolated:N", title="extrapolated", scale=alt.Scale(domain=[False, True], range=[[1, 0], [4, 3]])
            ),
        )
    )
    points = (
        alt.Chart()
        .transform_calculate(fill=f"datum.number == '{VALID}' ? datum.arm : '{BLOCKED}'")
        .mark_point(size=30, strokeWidth=1.5, opacity=1)
        .encode(
            x=x,
            y=y,
            color=color,
            fill=alt.Fill(
                "fill:N",
                title="number",
                scale=alt.Scale(domain=[*arms, BLOCKED], range=[*palette, "white"]),
                legend=alt.Legend(values=[BLOCKED], symbolType="circle", symbolStrokeColor="#555"),
            ),
            opacity=opacity,
            tooltip=[
                "arm:N",
                alt.Tooltip("compute:Q", format=".3e"),
                alt.Tooltip("multiplier:Q", format=".3f"),
                alt.Tooltip("ci_low:Q", format=".3f"),
                alt.Tooltip("ci_high:Q", format=".3f"),
                "extrapolated:N",
                alt.Tooltip("blocked_by:N", title="failed health checks"),
                alt.Tooltip("warned_checks:N", title="warned health checks"),
            ],
        )
    )
    one = alt.Chart().mark_rule(color="#999", strokeDash=[2, 2]).encode(y=alt.datum(1))
    return (
        alt.layer(band, line, points, one, data=data)
        .add_params(sel)
        .properties(width=WIDTH, height=HEIGHT)
        .facet(facet=alt.Facet("panel:N", title=None), columns=COLUMNS)
        .resolve_scale(y="independent")
        .properties(title=alt.TitleParams("Compute multiplier over the baseline", subtitle=_qualified_subtitle(data)))
    )


def _qualified_subtitle(data: pl.DataFrame) -> str:
    fits = data.filter(pl.col("number") == BLOCKED).select("panel", "arm").unique().height
    total = data.select("panel", "arm").unique().height
    if not fits:
        return "no health check fails for the runs of any multiplier shown"
    head = "every multiplier here is" if fits == total else f"{fits} of {total} multipliers are"
    return f"{head} under a failed health check of its runs (hollow points): see the multiplier table"
