"""`rlrs report STUDY`: the study's answer as one static HTML page.

reports/<study>/index.html works from file:// with the network off: the
Vega, Vega-Lite and vega-embed JavaScript is embedded once
(vl_convert.javascript_bundle) and each chart is one vegaEmbed call on a spec
stored in a <script type="application/json"> block. Every figure is also
written as figures/<name>.png and .svg (vl-convert, offline).

Numbers come from rlrs.analysis, charts from rlrs.plots, words and tables
from rlrs.report_text; this module only lays out the page and writes it. Every string that came from a study file or a run (study,
size and arm names, errors, paths) is HTML-escaped; JSON inside <script> has
'<', '>' and '&' escaped so no value can close the script element.

A small script at the end records each chart's render result in the DOM
(data-rendered on the chart, and #render-status), so a headless browser can
check the page without a DevTools connection.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import altair as alt
import polars as pl
import vl_convert as vlc

from rlrs import analysis, atomic, db, plots, report_health, scaling_report, sweep_plots
from rlrs.analysis import members, tables
from rlrs.report_text import (
    ABLATION_COLUMNS,
    FINAL_COLUMNS,
    PROBLEM_COLUMNS,
    REGRET_COLUMNS,
    SIZES_COLUMNS,
    SPEEDUP_COLUMNS,
    TUNED_COLUMNS,
    USWEEP_COLUMNS,
    esc,
    multipliers_table,
    script_json,
    table,
    with_checks_text,
)
from rlrs.vega import PNG_SCALE, VL_VERSION


# ---------------------------------------------------------------- figures
@dataclass(frozen=True)
class Figure:
    name: str
    title: str
    caption: str
    needs: str  # what the study lacks when the figure is left out
    build: Callable[[dict[str, pl.DataFrame]], alt.TopLevelMixin | None]
    # A figure of an optional part of a study (a tune block): left out without
    # a "not shown" note when the study does not have that part.
    part: str | None = None


def _if_rows(
    name: str,
    make: Callable[[pl.DataFrame], alt.TopLevelMixin],
    keep: Callable[[pl.DataFrame], pl.DataFrame] = lambda f: f,
):
    """A builder that draws frames[name] when it has rows (after `keep`)."""

    def build(frames):
        frame = keep(frames[name])
        return make(frame) if frame.height else None

    return build


FIGURES = (
    Figure(
        "speedup_vs_size",
        "Speedup against model size",
        "Each point is one arm at one model size: how many more steps (in %) the baseline needs to reach that "
        "arm's final eval loss (T*/T - 1; 0 = no gain). The x axis is the number of non-embedding parameters "
        "(log). Bars are 95% intervals from a bootstrap that resamples seeds jointly across the arm and the "
        "baseline; no bar means fewer than 3 seeds in a group. Triangles mark bounds: "
        "the arm beat the longest (or lost to the shortest) baseline run, so the true value lies beyond the "
        "triangle and was not extrapolated. Hollow marks (dashed bars) are numbers under a failed health check "
        "(hover for which; they are listed under 'Numbers under failed checks'): drawn, never joined by a line, not "
        "valid results. Left: the ladder definition (baseline final loss over run lengths); "
        "right: the target definition (steps along the baseline's eval curve). A flat line through valid estimates "
        "means the schedule tuned at the small size keeps its advantage at larger sizes.",
        "no speedup could be computed: that needs baseline runs at two or more lengths (a `ladder` sweep) or a "
        "baseline eval curve, and a completed non-baseline arm at the same size",
        _if_rows(
            "speedup",
            plots.speedup_vs_size,
            lambda f: f.filter(pl.col("speedup_kind").is_not_null()),
        ),
    ),
    Figure(
        "loss_gap_vs_size",
        "Final-loss gap against model size",
        "Each point is one arm at one model size: the baseline's final eval loss minus the arm's, both after the "
        "same number of steps and each at its own best learning rate (positive: the arm is ahead). Bars are 95% "
        "intervals (Student-t on the seed-paired differences); no bar means fewer than 3 paired seeds. Unlike the speedup, "
        "this is defined even where the arm beats every baseline run, so the speedup is only a bound. Hollow marks "
        "(dashed bars) are gaps under a failed health check, never joined by a line.",
        "no size has completed runs of both the baseline and another arm at the same length",
        _if_rows(
            "speedup",
            plots.loss_gap_vs_size,
            lambda f: f.filter((pl.col("definition") == "ladder") & pl.col("loss_gap").is_not_null()),
        ),
    ),
    Figure(
        "tune_progress",
        "Tuning: greedy local search",
        "The search at each tuning size (spec section 4): the line is the best score so far (mean train loss of "
        "the last 100 steps unless the study says otherwise) against the number of distinct runs the search has "
        "spent, one line per arm (the baseline searches the global settings only; the relative arm also every "
        "component's start and end multiplier). Faint points are every candidate tried (diverged ones left "
        "out); hover them for the parameter and factor. The tuned settings then replace the arms' settings at the "
        "larger sizes (the transfer above).",
        "the study has no tune block, or its searches have not been collected",
        _if_rows("tune_progress", sweep_plots.tune_progress),
        part="tune",
    ),
    Figure(
        "loss_curves",
        "Loss curves",
        "Per model size, the compared runs (mean over seeds): lines are training loss averaged over bins of "
        "steps, dots are eval losses. Each arm is shown at the learning rate it is compared at. The black cross "
        "marks the step at which the baseline's eval curve first reaches that arm's final eval loss (the target "
        "definition), grey where that speedup is under a failed health check; the subtitle gives both speedups "
        "and the checks that block them. Click a legend entry to highlight it.",
        "no completed main runs with metrics",
        lambda frames: (
            plots.loss_curves(frames["loss_curves"], frames["speedup"]) if frames["loss_curves"].height else None
        ),
    ),
    Figure(
        "lr_schedules",
        "Per-component learning-rate schedules",
        "The learning rate each component actually trained with (read from the run's metrics), per arm, at the "
        "smallest size of each model family (dense, MoE; one dash pattern each): the baseline gives every "
        "component the same cosine; the relative schedule gives each "
        "component its own peak (start multiplier) and floor (end multiplier times the global final fraction).",
        "no completed main runs with per-component learning rates",
        _if_rows("lr_schedules", plots.lr_schedules),
    ),
    Figure(
        "lr_sweep",
        "Base learning-rate sweeps",
        "Final eval loss against the base learning rate, one line per size, one panel per arm, each point the "
        "mean over the seeds every lr of its line has (a staged study's chosen lr also holds the reported seeds, "
        "which the other lrs never ran: its mean over all of them is in the tooltip, not on the line). "
        "The large dot is the lr the speedup compares that arm at: the lowest of these means, where an lr on "
        "which a seed diverged is chosen only if every lr has a diverged seed. Hover a point for its run ids and "
        "seed counts.",
        "the study has no `lr` sweep (or its lr points share no seed)",
        _if_rows("lr_sweep", sweep_plots.lr_sweep, lambda f: f.filter(pl.col("mean_loss_shared").is_not_null())),
    ),
    Figure(
        "lr_vs_width",
        "Best base learning rate against width",
        "Each point is one arm at one width: the base lr its sweep chose (a staged study's stage-1 selection, "
        "else the lr sweep as it ran), on log axes, one line per arm (colour) and parametrization (dash), a panel "
        "per model family. Filled circles are bracketed lrs (a swept point on each side was worse); open triangles "
        "are unbracketed: the best lr sat at the edge of the sweep, so the optimum may lie beyond it. Under muP the "
        "line should stay flat as the width grows (the base model's lr transfers); under the standard "
        "parametrization it falls. Below: the mean final eval loss at that lr (the reported seeds' main runs where "
        "there are any). The table 'Best base lr against width' gives the numbers and the failed checks.",
        "the study has no lr sweep (or lr selection) with two or more lrs at a size",
        _if_rows("lr_vs_width", sweep_plots.lr_vs_width, lambda f: f.filter(pl.col("n_points") >= 2)),
    ),
    Figure(
        "usweep",
        "Sensitivity of each multiplier (U-plots)",
        "Final eval loss when one component's start or end multiplier is scaled by a factor (log x; factor 1 is "
        "the tuned value), the others held at their tuned values; one line per size, each point the mean over "
        "the seeds every factor of its line has. The large dot is the best factor at that size. A minimum at 1 "
        "that stays at 1 for the larger size means the tuned value transfers. The table 'U-sweep points' gives "
        "the numbers beside the health checks of each size's runs.",
        "the study has no `usweep` sweep (or its points share no seed)",
        _if_rows("usweep", sweep_plots.usweep, lambda f: f.filter(pl.col("mean_loss_shared").is_not_null())),
    ),
    Figure(
        "ablation",
        "Ablations",
        "Change in final eval loss when one component is changed. Removal: the full relative schedule with that "
        "component reset to the baseline's (1, 1); a positive bar means the component's schedule helps. "
        "Contribution: the baseline plus only that component's relative values; a negative bar means it helps "
        "on its own. References are matched on size, learning rate and length, and each run is compared with the "
        "reference run of the same seed (seed-matched differences). The table 'Ablations' gives each number "
        "beside the health checks of its reference arm's runs at that size (hover a bar for the failed ones).",
        "the study has no completed `removal` or `contribution` runs with a matching reference",
        _if_rows("ablation", sweep_plots.ablation, lambda f: f.filter(pl.col("delta").is_not_null())),
    ),
    Figure(
        "update_sizes",
        "Relative update size per component",
        "How far each step moves each component's weights, ||ΔW|| / ||W|| (log y), over training, mean over "
        "seeds of the main runs; one colour per arm, one dash pattern per size. Compare the arms within a panel "
        "to see how the relative schedule changes each component's pace (the paper's Figure 1).",
        "no update sizes in the metrics",
        _if_rows("update_sizes", plots.update_sizes),
    ),
    # the scaling-law fits, for a study with a scaling sweep (rlrs.scaling_report)
    *(Figure(*spec, part=scaling_report.PART) for spec in scaling_report.FIGURES),
)


# ---------------------------------------------------------------- page
_CSS = """
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;max-width:1180px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em;margin-bottom:.2em} h2{margin-top:1.8em;border-bottom:1px solid #ddd;padding-bottom:.2em}
.meta{color:#666} .description{font-size:1.05em;max-width:900px} .note{color:#777;font-size:12px} .missing{color:#8a5a00;background:#fff7e6;padding:.4em .7em;border-left:3px solid #e0a030}
figure{margin:1.2em 0 2em} figcaption{color:#444;max-width:900px;margin-top:.4em} .chart{min-height:120px}
table{border-collapse:collapse;margin:.6em 0 1.2em;font-size:12.5px} th,td{border:1px solid #ddd;padding:3px 7px;text-align:left;vertical-align:top}
th{background:#f4f4f4} td{max-width:420px;overflow-wrap:anywhere} .downloads{font-size:12px}
#render-status{font-size:11px;color:#888;white-space:pre-wrap}
"""

_RENDER_SCRIPT = """
(function () {
  var status = document.getElementById("render-status");
  var errors = [];
  window.addEventListener("error", function (e) { errors.push("page error: " + e.message); });
  var consoleError = console.error;
  console.error = function () {
    errors.push("console.error: " + Array.prototype.map.call(arguments, String).join(" "));
    consoleError.apply(console, arguments);
  };
  var charts = Array.prototype.slice.call(document.querySelectorAll(".chart[data-spec]"));
  Promise.all(charts.map(function (el) {
    var spec = JSON.parse(document.getElementById(el.dataset.spec).textContent);
    return vegaEmbed(el, spec, {renderer: "svg", actions: {export: true, source: false, compiled: false, editor: false}})
      .then(function () { el.dataset.rendered = el.querySelector("svg") ? "yes" : "empty"; })
      .catch(function (err) { el.dataset.rendered = "error"; errors.push(el.id + ": " + err); el.textContent = "chart failed: " + err; });
  })).then(function () {
    var ok = charts.filter(function (el) { return el.dataset.rendered === "yes"; }).length;
    status.dataset.charts = String(charts.length);
    status.dataset.rendered = String(ok);
    status.dataset.errors = String(errors.length);
    status.textContent = ok + " of " + charts.length + " charts rendered" + (errors.length ? "\\n" + errors.join("\\n") : "");
    status.dataset.done = "yes";
  });
})();
"""


def _sweeps_section(frames: dict[str, pl.DataFrame]) -> list[str]:
    """The ablations and the U-sweep points as tables, each number beside
    the health checks of its cell (the analysis' failed_checks,
    warned_checks: those of the runs at its size and arm)."""
    out = []
    ab, u = frames["ablation"], frames["usweep"]
    if ab.height:
        out += [
            '<h3 id="ablation-table">Ablations</h3>',
            "<p>Each removal or contribution against its reference arm at the same size, lr and length, "
            "seed-matched, beside the health checks that fail (or warn) for the reference arm's runs at that size: "
            "a number under a failed check is qualified by it, not a result.</p>",
            table(with_checks_text(ab), ABLATION_COLUMNS, cls="ablation"),
        ]
    if u.height:
        out += [
            '<h3 id="usweep-table">U-sweep points</h3>',
            '<details id="usweep-rows"><summary>'
            f"{u.height} point(s): the loss over the seeds every point of the line has (the best factor is chosen "
            "on it), over all of the point's seeds, and the health checks of the arm's runs at that size"
            "</summary>" + table(with_checks_text(u), USWEEP_COLUMNS, cls="usweep") + "</details>",
        ]
    return out


def _tuned_section(tuned: pl.DataFrame) -> list[str]:
    return [
        "<h3>Tuned settings vs the paper</h3>",
        "<p>Each search's final value of every parameter it searched, next to its starting value and the paper's "
        "tuned value (spec section 3: its MoE and dense multiplier tables; global settings from its MoE config; "
        "— where the paper gives none). These settings are what every size of the family ran with.</p>",
        table(tuned, TUNED_COLUMNS) if tuned.height else "<p>No tuning results collected yet.</p>",
    ]


@dataclass
class Built:
    html: str
    figures: dict[str, dict]  # name -> Vega-Lite spec
    missing: dict[str, str]  # name -> why it is not shown


def build_page(study: str, frames: dict[str, pl.DataFrame], extra: dict, bundle: str) -> Built:
    """Assemble the page from analysis frames and report tables."""
    specs: dict[str, dict] = {}
    missing: dict[str, str] = {}
    sections: list[str] = []
    for fig in FIGURES:
        if fig.part is not None and fig.part not in extra.get("parts", ()):
            continue
        chart = fig.build(frames)
        if chart is None:
            missing[fig.name] = fig.needs
            sections.append(f'<h2>{esc(fig.title)}</h2><p class="missing">Not shown: {esc(fig.needs)}.</p>')
            continue
        specs[fig.name] = chart.to_dict()
        sections.append(
            f'<h2 id="{fig.name}">{esc(fig.title)}</h2><figure>'
            f'<div class="chart" id="fig-{fig.name}" data-spec="spec-{fig.name}"></div>'
            f"<figcaption>{esc(fig.caption)} "
            f'<span class="downloads">[<a href="figures/{fig.name}.png">PNG</a> · <a href="figures/{fig.name}.svg">SVG</a>]</span>'
            "</figcaption></figure>"
        )

    sp = frames["speedup"]
    headline_html, blocked_html, footnotes_html = report_health.headline_sections(sp, frames["health"])
    problems = extra["problems"]
    problems_html = (
        f"<p>{problems.height} run(s) did not complete; their losses are excluded from every number above.</p>"
        + table(problems, PROBLEM_COLUMNS)
        if problems.height
        else "<p>Every planned run completed.</p>"
    )
    mult = multipliers_table(extra["multipliers"])
    prov = extra["provenance"]
    prov_html = "".join(
        f"<h3>{esc(title)}</h3>{table(prov[key])}"
        for key, title in (
            ("study", "Study file"),
            ("commits", "Code (git commits)"),
            ("corpus", "Data"),
            ("versions", "Package versions"),
            ("executors", "Executors and hosts"),
        )
        if key in prov and prov[key].height
    )
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>RLRS study report: {esc(study)}</title>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<style>{_CSS}</style>",
        f"<script>{bundle}</script></head><body>",
        f"<h1>RLRS study report: {esc(study)}</h1>",
        report_health.description(extra.get("config") or {}),
        f"<p class='meta'>Generated {esc(dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC'))} from "
        f"{esc(extra['db_path'])}. Speedup = T*/T - 1: how many more steps the baseline needs to match an arm's "
        "final eval loss; steps saved = 1 - T/T*. Intervals (95%): the loss gap's is Student-t on the seed-paired "
        "differences; a speedup's is a bootstrap that resamples seeds jointly across the arm and the baseline; none "
        "below 3 seeds.</p>",
        '<h2 id="health">Study health</h2>',
        report_health.health_section(frames["health"]),
        "<h2>Headline</h2>",
        headline_html,
        report_health.not_measured(frames["health"]),
        footnotes_html,
        blocked_html,
        *sections,
        "<h2>Tables</h2>",
        "<h3>Model sizes</h3>",
        table(extra["sizes"], {k: v for k, v in SIZES_COLUMNS.items() if k in extra["sizes"].columns}),
        "<h3>Multipliers per arm (start / end)</h3>",
        table(mult) if mult.height else "<p>No main runs.</p>",
        "<h3>Final losses (main runs)</h3>",
        table(frames["final_losses_by_arm"], FINAL_COLUMNS),
        "<h3>Speedups</h3>",
        table(sp, SPEEDUP_COLUMNS) if sp.height else "<p>None computed.</p>",
        *(_tuned_section(frames["tuned_settings"]) if "tune" in extra.get("parts", ()) else []),
        *(scaling_report.section(frames) if scaling_report.PART in extra.get("parts", ()) else []),
        report_health.tuning_section(extra["budgets"]) if "budgets" in extra else "",
        report_health.lr_choice_section(frames["health"]),
        report_health.lr_width_section(frames["lr_vs_width"]),
        *_sweeps_section(frames),
        "<h3>Transfer regret</h3>",
        "<p>For each swept parameter: the factor that was best at the smallest size, used at a larger size, "
        "minus the best loss at that larger size (0 = the small-scale choice is still optimal), both over the "
        "seeds the two points both have (a staged study's chosen lr also holds the reported seeds, which "
        "the other lrs never ran).</p>",
        table(frames["regret"], REGRET_COLUMNS)
        if frames["regret"].height
        else "<p>No parameter was swept at two or more sizes.</p>",
        "<h2>Failed, diverged and missing runs</h2>",
        problems_html,
        "<h2>Provenance</h2>",
        prov_html or "<p>No provenance recorded.</p>",
        '<p id="render-status" data-done="no">rendering charts…</p>',
        *(
            f'<script type="application/json" id="spec-{name}">{script_json(spec)}</script>'
            for name, spec in specs.items()
        ),
        f"<script>{_RENDER_SCRIPT}</script>",
        "</body></html>",
    ]
    return Built("\n".join(parts), specs, missing)


@functools.lru_cache(maxsize=1)
def javascript_bundle() -> str:
    """The Vega + Vega-Lite + vega-embed bundle, made safe to inline: a
    '</script' inside it would end the element early (none today; the
    replacement only matters inside string literals, where '<\\/' is '</')."""
    return re.sub(r"</(script)", r"<\\/\1", vlc.javascript_bundle(vl_version=VL_VERSION), flags=re.IGNORECASE)


# ---------------------------------------------------------------- files
def export_figures(specs: dict[str, dict], folder: Path) -> list[Path]:
    """figures/<name>.png and .svg for every figure; stale ones removed."""
    written = []
    for name, spec in specs.items():
        svg = vlc.vegalite_to_svg(spec, vl_version=VL_VERSION)
        png = vlc.vegalite_to_png(spec, vl_version=VL_VERSION, scale=PNG_SCALE)
        for path, data in ((folder / f"{name}.svg", svg.encode()), (folder / f"{name}.png", png)):
            atomic.write_bytes(path, data)
            written.append(path)
    if folder.is_dir():
        for old in folder.iterdir():
            if old.suffix in (".png", ".svg") and old.stem not in specs:
                old.unlink()
    return written


def write_report(study: str, db_path: Path, out_html: Path, *, figures: bool = True) -> Built:
    """Read the study's DuckDB, write out_html (and figures/ beside it).

    The database is only read: every frame is computed here, in memory, from
    a read-only connection (the same computation `rlrs collect` stores as the
    analysis views; the report never writes the database)."""
    con = db.connect(db_path, read_only=True)
    try:
        frames = analysis.compute(con, study)  # raises ConfigError for an unknown study
        runs = members.load_members(con, study)
        extra = {
            "db_path": str(db_path),
            "sizes": tables.sizes_table(con, study),
            "multipliers": tables.arm_multipliers(con, runs),
            "problems": tables.problem_runs(con, runs),
            "provenance": tables.provenance(con, study),
            "parts": members.study_parts(con, study) | scaling_report.parts(runs),
            "config": tables.study_config(con, study),
            "budgets": tables.tuning_budgets(con, study),
        }
    finally:
        con.close()
    built = build_page(study, frames, extra, javascript_bundle())
    if figures:
        export_figures(built.figures, out_html.parent / "figures")
    atomic.write_bytes(out_html, built.html.encode())
    return built
