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


# A number whose qualifying health checks failed (the analysis' *_blocked_by
# columns, rlrs.analysis.health.with_blocking) is drawn hollow, with a dashed
# interval and no line through it, under the legend entry BLOCKED; a bound is
# a triangle pointing the way the true value lies, never joined by a line.
# ARM_PALETTE is Vega's default category scheme (tableau10), made explicit
# so the hollow fill can sit beside the arms' colours.
VALID, BLOCKED = "valid", "blocked: failed checks"
ARM_PALETTE = "#4c78a8 #f58518 #e45756 #72b7b2 #54a24b #eeca3b #b279a2 #ff9da6 #9d755d #bab0ac".split()
FAMILY_DASH = alt.Scale(domain=["dense", "moe"], range=[[1, 0], [5, 3]])
SPEEDUP_SHAPES = alt.Scale(
    domain=["estimate", "at least (beyond longest baseline)", "at most (below shortest baseline)"],
    range=["circle", "triangle-up", "triangle-down"],
)


def validity(blocked_by: str) -> list[pl.Expr]:
    """Each row's legend label (`number`: VALID or BLOCKED) and the checks
    that block it (`blocked_by`), read from the analysis' column `blocked_by`."""
    return [
        pl.when(pl.col(blocked_by).is_null()).then(pl.lit(VALID)).otherwise(pl.lit(BLOCKED)).alias("number"),
        pl.col(blocked_by).alias("blocked_by"),
    ]


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
        marks = reach.select(
            "arm",
            pl.col("t_star").alias("step"),
            pl.col("arm_loss").alias("loss"),
            "speedup",
            *validity("speedup_blocked_by"),
        )
        # A target speedup under a failed check: a grey cross, not the black one.
        layers.append(
            alt.Chart(marks)
            .mark_point(shape="cross", size=140, strokeWidth=2, clip=True)
            .encode(
                x="step:Q",
                y=y,
                color=alt.condition(alt.datum.number == VALID, alt.value("black"), alt.value("#aaa")),
                tooltip=[
                    alt.Tooltip("arm:N", title="baseline reaches the final loss of"),
                    alt.Tooltip("step:Q", format=".0f"),
                    alt.Tooltip("loss:Q", format=".4f"),
                    alt.Tooltip("speedup:Q", format="+.1%", title="target speedup"),
                    alt.Tooltip("blocked_by:N", title="blocked by failed checks"),
                ],
            )
        )
    return alt.layer(*layers).properties(
        width=2 * WIDTH, height=int(1.3 * HEIGHT), title=alt.TitleParams(size, subtitle=subtitle or "")
    )


def _speedup_text(r: dict) -> str:
    """'rlrs, ladder: +20% steps (95% CI +17% to +23%)' or its bound, and
    the failed checks that block it."""
    text = _speedup_number(r)
    return text + (f" [blocked: failed {r['speedup_blocked_by']}]" if r["speedup_blocked_by"] else "")


def _speedup_number(r: dict) -> str:
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


def _blocked_subtitle(data: pl.DataFrame) -> str:
    n = int((data["number"] == BLOCKED).sum())
    if not n:
        return "every number shown passes the health checks that qualify it"
    head = "every number here is" if n == data.height else f"{n} of {data.height} numbers are"
    return f"{head} under a failed health check (hollow, not joined): see 'Numbers under failed checks'"


def _against_size(data: pl.DataFrame, y: alt.Y, ci: tuple[str, str], shape: alt.Shape, tooltip: list) -> alt.LayerChart:
    """One number per (size, arm) against non-embedding parameters (log x):
    valid estimates filled and joined per family (one dash each), blocked
    numbers hollow and unjoined, 95% intervals as bars (dashed when
    blocked), a zero line; legend entries highlight an arm."""
    data = data.with_columns(
        pl.format("{} ({})", "arm", "family").alias("line"),
        pl.when(pl.col("number") == VALID).then(pl.col("arm")).otherwise(pl.lit(BLOCKED)).alias("fill"),
    )
    sel, opacity = legend_highlight("arm")
    x = alt.X(
        "params_nonembedding:Q",
        title="non-embedding parameters",
        scale=alt.Scale(type="log"),
        axis=alt.Axis(format="~s"),
    )
    valid = alt.datum.number == VALID
    # Filled in the arm's colour when valid, white (hollow) when blocked: the
    # fill scale is the colour scale plus BLOCKED, its legend BLOCKED alone.
    arms = sorted(data["arm"].unique().to_list())
    palette = [ARM_PALETTE[i % len(ARM_PALETTE)] for i in range(len(arms))]
    base = alt.Chart(data)
    points = base.mark_point(size=80, strokeWidth=2, opacity=1).encode(
        x=x,
        y=y,
        color=alt.Color("arm:N", scale=alt.Scale(domain=arms, range=palette)),
        fill=alt.Fill(
            "fill:N",
            title="number",
            scale=alt.Scale(domain=[*arms, BLOCKED], range=[*palette, "white"]),
            legend=alt.Legend(values=[BLOCKED], symbolType="circle", symbolStrokeColor="#555", symbolStrokeWidth=2),
        ),
        opacity=opacity,
        shape=shape,
        tooltip=[*tooltip, alt.Tooltip("blocked_by:N", title="blocked by failed checks")],
    )
    lines = (
        base.transform_filter(valid & (alt.datum.kind == "estimate"))
        .mark_line()
        .encode(
            x=x,
            y=y,
            color="arm:N",
            detail="line:N",
            opacity=opacity,
            strokeDash=alt.StrokeDash("family:N", title="family (lines join valid estimates)", scale=FAMILY_DASH),
        )
    )
    bars = (
        base.transform_filter(f"isValid(datum.{ci[0]}) && isValid(datum.{ci[1]})")
        .mark_rule(strokeWidth=2)
        .encode(
            x=x,
            y=f"{ci[0]}:Q",
            y2=f"{ci[1]}:Q",
            color="arm:N",
            opacity=opacity,
            strokeDash=alt.condition(valid, alt.value([1, 0]), alt.value([3, 2])),
        )
    )
    zero = base.mark_rule(color="gray", strokeDash=[2, 2]).encode(y=alt.datum(0))
    return alt.layer(zero, bars, lines, points).add_params(sel).properties(width=WIDTH + 60, height=HEIGHT + 30)


def speedup_vs_size(frame: pl.DataFrame) -> alt.Chart:
    """Figure 3: speedup (T*/T - 1) against non-embedding parameters, log x,
    95% intervals as bars; bounds drawn as triangles at the edge they pass;
    a number under a failed health check hollow (see _against_size)."""
    kind_label = dict(zip(["estimate", "at least", "at most"], SPEEDUP_SHAPES.domain))
    data = (
        frame.filter(pl.col("speedup_kind").is_not_null())
        .with_columns(
            pl.coalesce("speedup", "bound_value").alias("y"),
            pl.col("speedup_kind").alias("kind"),
            pl.col("speedup_kind").replace_strict(kind_label).alias("point"),
            pl.coalesce("bound", pl.col("speedup").round(3).cast(pl.Utf8)).alias("value"),
            *validity("speedup_blocked_by"),
        )
        .select(
            "size",
            "arm",
            "family",
            "definition",
            "params_nonembedding",
            "y",
            "ci_low",
            "ci_high",
            "kind",
            "point",
            "value",
            "n_seeds",
            "number",
            "blocked_by",
        )
    )
    chart = _against_size(
        data,
        alt.Y("y:Q", title="speedup T*/T - 1", axis=alt.Axis(format="%")),
        ("ci_low", "ci_high"),
        alt.Shape("point:N", title="point", scale=SPEEDUP_SHAPES),
        [
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
    return chart.facet(column=alt.Column("definition:N", title="speedup definition")).properties(
        title=alt.TitleParams(
            "Speedup against model size (tuned small, applied large)", subtitle=_blocked_subtitle(data)
        )
    )


def loss_gap_vs_size(frame: pl.DataFrame) -> alt.Chart:
    """Baseline minus arm final eval loss at equal steps (each at its best lr)
    against non-embedding parameters, log x, 95% intervals as bars: how far
    ahead each arm is, also where the speedup is only a bound; a gap under
    a failed health check hollow (see _against_size)."""
    data = (
        frame.filter((pl.col("definition") == "ladder") & pl.col("loss_gap").is_not_null())
        .with_columns(pl.lit("estimate").alias("kind"), *validity("loss_gap_blocked_by"))
        .select(
            "size",
            "arm",
            "family",
            "params_nonembedding",
            "loss_gap",
            "loss_gap_ci_low",
            "loss_gap_ci_high",
            "arm_loss",
            "baseline_loss",
            "n_seeds",
            "steps",
            "kind",
            "number",
            "blocked_by",
        )
    )
    return _against_size(
        data,
        alt.Y("loss_gap:Q", title="baseline loss - arm loss (nats)"),
        ("loss_gap_ci_low", "loss_gap_ci_high"),
        alt.Shape("family:N", title="family"),
        [
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
    ).properties(
        title=alt.TitleParams(
            "Final-loss gap against model size (same steps, each arm at its best lr)", subtitle=_blocked_subtitle(data)
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
