"""The report's scaling-law part: the figures (title, caption, what is
missing, which frames they draw) and the section of tables and sentences,
from the frames of rlrs.analysis.scaling (the views `scaling_points`,
`scaling_fit`, `compute_multiplier`, `scaling_frontier`, `scaling_iso_loss`).
Shown only for a study with a `scaling` sweep (the part "scaling")."""

from __future__ import annotations

import polars as pl

from rlrs import scaling_plots, tags
from rlrs.report_text import esc, table, with_checks_text

PART = "scaling"
_NEEDS = (
    "no scaling-law fit: that needs completed `scaling` runs of an arm, more of them (after the hold-out) "
    "than the law has parameters (chinchilla: 5)"
)

# (name, title, caption, needs, build(frames) -> chart or None)
FIGURES = (
    (
        "scaling_observed_vs_fitted",
        "Scaling laws: observed against fitted loss",
        "Each point is one run of the scaling sweep: its final eval loss against the value of the law fitted to "
        "its arm (log-space summed Huber, L-BFGS-B from a grid). Points on the dashed line are fitted exactly. "
        "Crosses are the held-out runs (the largest-compute ones), which the fit did not see: their distance "
        "from the line is the extrapolation error. The panel says which law, family and parameter count N.",
        _NEEDS,
        lambda f: scaling_plots.observed_vs_fitted(f["scaling_points"]) if f["scaling_points"].height else None,
    ),
    (
        "scaling_loss_vs_compute",
        "Scaling laws: loss against compute, with each arm's frontier",
        "Dots: the runs' final losses against their compute C = 6ND (N as the panel says). Lines: each arm's "
        "fitted compute-optimal frontier L*(C) (the lowest loss the law allows at C), with its 95% bootstrap "
        "band over runs; dashed beyond the largest compute the fit was trained on (extrapolated).",
        _NEEDS,
        lambda f: (
            scaling_plots.loss_vs_compute(f["scaling_points"], f["scaling_frontier"])
            if f["scaling_frontier"].height
            else None
        ),
    ),
    (
        "scaling_iso_loss",
        "Scaling laws: iso-loss contours in (N, D)",
        "For each fit and arm: lines of equal fitted loss over parameters N and tokens D (log-log), the "
        "compute-optimal allocation (N_opt, D_opt) across budgets (black) and the runs (grey). Where the black "
        "line crosses a contour is the cheapest way to reach that loss.",
        _NEEDS,
        lambda f: (
            scaling_plots.iso_loss(f["scaling_iso_loss"], f["scaling_frontier"], f["scaling_points"])
            if f["scaling_iso_loss"].height
            else None
        ),
    ),
    (
        "compute_multiplier",
        "Compute multiplier against compute",
        "How many times more compute the baseline needs to reach the loss the arm reaches, along both "
        "compute-optimal frontiers (1 = no gain; 0 = the arm never reaches the baseline's loss), at the baseline's "
        "compute C. The band is a 95% paired bootstrap interval over runs (both arms refit on each resample); "
        "a resample that leaves it undefined counts as beyond both ends, and there is no band where more than "
        "2.5% do. Dashed: extrapolated beyond the fitted compute, "
        "up to the study's named budget; trust it less. Hollow points: a multiplier whose runs (the arm's or the "
        "baseline's) fail a health check (hover for which; the table names them): qualified by that failure, "
        "not a result.",
        "no compute multiplier: that needs a scaling-law fit of the baseline and of another arm of one family",
        lambda f: (
            scaling_plots.multiplier_vs_compute(f["compute_multiplier"]) if f["compute_multiplier"].height else None
        ),
    ),
)

FIT_COLUMNS = {
    "law": ("law", ""),
    "family": ("family", ""),
    "arm": ("arm", ""),
    "n_kind": ("N", ""),
    "parameter": ("parameter", ""),
    "value": ("value", ""),
    "ci_low": ("95% low", ""),
    "ci_high": ("95% high", ""),
    "rmse_train": ("RMSE train (log L)", ""),
    "rmse_heldout": ("RMSE held out", ""),
    "n_points": ("runs fitted", ""),
    "n_heldout": ("held out", ""),
    "checks": ("health checks of its runs", ""),
}
MULTIPLIER_COLUMNS = {
    "law": ("law", ""),
    "family": ("family", ""),
    "arm": ("arm", ""),
    "n_kind": ("N", ""),
    "compute": ("baseline compute (FLOPs)", ""),
    "multiplier": ("multiplier", ""),
    "ci_low": ("95% low", ""),
    "ci_high": ("95% high", ""),
    "extrapolated": ("extrapolated", ""),
    "checks": ("health checks of both fits' runs", ""),
}
# The coefficients and the derived quantities at the named budget; m, mu, n, nu repeat them in another form.
_SHOWN = ("A", "alpha", "B", "beta", "c", "a", "b", "g", "gamma", "delta", "omega", "zeta", "E_start", "E_max")


def parts(members: pl.DataFrame) -> set[str]:
    """{"scaling"} when the study has a scaling sweep."""
    return {PART} if members.filter(pl.col("sweep") == tags.SCALING).height else set()


def section(frames: dict[str, pl.DataFrame]) -> list[str]:
    """The tables of the fits and of the multiplier at the largest in-range
    budget and at the named extrapolation budget."""
    fit, mult = frames["scaling_fit"], frames["compute_multiplier"]
    if not fit.height:
        return ["<h3>Scaling-law fits</h3>", f'<p class="missing">{esc(_NEEDS)}.</p>']
    shown = fit.filter(pl.col("parameter").is_in(_SHOWN) | pl.col("parameter").str.contains("@C="))
    out = [
        "<h3>Scaling-law fits</h3>",
        "<p>Every coefficient of every fit with its 95% bootstrap interval over runs, the RMSE of log L over the "
        "training runs and over the held-out (largest-compute) runs, and the compute-optimal N_opt, D_opt and "
        "loss at the study's named extrapolation budget (parameter@C=...). N is the parameter count the column "
        "names. Beside each, the health checks that fail or warn for the (size, arm) cells of its runs "
        "(a failed one qualifies the fit: it is not a result until fixed; <code>scaling_lr</code> fails when the "
        "runs' lr was not the bracketed best at their size, which mixes the arm's effect with lr mis-tuning). "
        "All numbers: view <code>scaling_fit</code>.</p>",
        table(with_checks_text(shown), FIT_COLUMNS),
    ]
    if mult.height:
        last_in = mult.filter(~pl.col("extrapolated")).group_by(["law", "family", "arm"]).agg(pl.col("compute").max())
        picked = mult.join(last_in, on=["law", "family", "arm", "compute"], how="inner")
        named = mult.filter(pl.col("compute") == pl.col("compute").max().over(["law", "family", "arm"]))
        out += [
            "<h3>Compute multiplier</h3>",
            "<p>Per family and arm, at the largest budget inside the fitted range and at the named extrapolation "
            "budget (extrapolated: the law's shape, not a measurement), beside the health checks of the runs of "
            "both fits it compares (the arm's and the baseline's). Every budget: view "
            "<code>compute_multiplier</code>.</p>",
            table(
                with_checks_text(
                    pl.concat([picked.select(mult.columns), named]).sort(["law", "family", "arm", "compute"])
                ),
                MULTIPLIER_COLUMNS,
            ),
        ]
    return out
