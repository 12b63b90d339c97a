"""The best base lr against width: does the optimum stay put as the model
widens (muP's promise, shared/spec/mup-moe.md section 4) or move (sp)?

One row per (size, arm) that has an lr choice, in lines of one family
(dense, moe), parametrization (sp, mup) and arm, narrowest width first:

- the lr: the cell's lr choice as the health checks judge it
  (rlrs.analysis.health_view.lr_choices: the `lr_selection` row of a staged
  study, else the lr sweep as it ran, bracketing.select_lr without extra
  points), with `bracketed` and `cap_reached` beside it;
- the loss at it: the mean final eval loss of the arm's main runs at that
  lr and its main length (in a staged study the reported seeds, which did
  not choose the lr), else of the lr sweep's runs at that lr;
- how far the lr moved: `lr_vs_base` = lr / the lr at the line's narrowest
  width, and `grid_steps_from_base` = log(lr_vs_base) / log(the grid's
  step), so 0 = the optimum stayed put, 1 = it moved one sweep step;
- `failed_checks`: the health checks that fail for the cell and qualify
  its numbers (its own rows, its size's, its family's, the study's; those
  that qualify a loss gap, not the ladder's, which qualify only a speedup),
  so that a number is never shown without the failure that qualifies it.
"""

from __future__ import annotations

import math

import duckdb
import polars as pl

from rlrs import tags
from rlrs.analysis import health, health_view, members
from rlrs.analysis.members import F, I, S, frame
from rlrs.db import has_table

SCHEMA = {
    "study": S,
    "family": S,
    "parametrization": S,
    "arm": S,
    "size": S,
    "d_model": I,
    "n_layers": I,
    "params_nonembedding": I,
    "width_mult": F,
    "lr": F,
    "bracketed": pl.Boolean,
    "cap_reached": pl.Boolean,
    "n_points": I,
    "lr_source": S,
    "grid_step": F,
    "lr_vs_base": F,
    "grid_steps_from_base": F,
    "mean_loss": F,
    "std_loss": F,
    "n": I,
    "loss_source": S,
    "failed_checks": S,
    "note": S,
}
COLUMN_DOCS = {
    "study": "study name",
    "family": "dense | moe",
    "parametrization": "sp | mup (model.parametrization of the size's runs)",
    "arm": "the arm",
    "size": "the size",
    "d_model": "its width",
    "n_layers": "its depth",
    "params_nonembedding": "its non-embedding parameters",
    "width_mult": "d_model / the d_model of the line's narrowest size (the line: family, parametrization, arm)",
    "lr": "the best base lr: stage 1's choice (lr_selection), else the lr sweep's lowest mean loss",
    "bracketed": "the lr has a swept point on each side (interior): false means the optimum may lie beyond the sweep",
    "cap_reached": "still at an edge after the selection's max_extra_points",
    "n_points": "lrs run for the choice (1: no sweep)",
    "lr_source": "lr_selection (a staged study's stage 1) | lr sweep (the sweep as it ran)",
    "grid_step": "the sweep's step between neighbouring lrs (the selection's factor; else the median ratio of neighbours)",
    "lr_vs_base": "lr / the lr at the line's narrowest width (1 = the optimum stayed put)",
    "grid_steps_from_base": "log(lr_vs_base) / log(grid_step): sweep steps the optimum moved from the narrowest width",
    "mean_loss": "mean final eval loss at the lr (main runs: the reported seeds; else the lr sweep's runs)",
    "std_loss": "their standard deviation over seeds (NULL below 2)",
    "n": "seeds in mean_loss",
    "loss_source": "main | lr sweep: which runs mean_loss averages",
    "failed_checks": "the health checks that fail for this cell and qualify its lr and loss (own, size, family and "
    "study rows; not the ladder's), comma-separated; NULL when none",
    "note": "why a value is missing, in words, or NULL",
}


def _grid_step(con: duckdb.DuckDBPyConnection, study: str) -> dict[tuple[str, str], float]:
    """(size, arm) -> the selection's step factor, where the study has lr_selection rows."""
    if not has_table(con, "lr_selection"):
        return {}
    got = con.execute("SELECT size, arm, factor FROM lr_selection WHERE study = ?", [study]).fetchall()
    return {(size, arm): factor for size, arm, factor in got if factor}


def _median_step(lrs: list[float]) -> float | None:
    """The median ratio of neighbouring swept lrs (None below 2 lrs)."""
    lrs = sorted(set(lrs))
    ratios = sorted(b / a for a, b in zip(lrs, lrs[1:]))
    return ratios[len(ratios) // 2] if ratios else None


def _loss_at(study_members: pl.DataFrame, size: str, arm: str, lr: float) -> tuple[members.Group | None, str]:
    """The runs at (size, arm, lr) and the main length: the main runs, else the lr sweep's."""
    steps = members.main_steps(study_members, size, arm)
    at = study_members.filter(
        (pl.col("size") == size)
        & (pl.col("arm") == arm)
        & ((pl.col("lr") - lr).abs() <= 1e-12 * lr)
        & ((pl.col("steps") == steps) if steps is not None else pl.lit(True))
    )
    for sweeps, source in (([tags.MAIN], "main"), (list(tags.LR_SWEEPS), "lr sweep")):
        groups = members.seed_groups(at.filter(pl.col("sweep").is_in(sweeps)))
        if groups and len(groups[0].losses):
            return groups[0], source
    return None, ""


def lr_vs_width(
    con: duckdb.DuckDBPyConnection, study: str, study_members: pl.DataFrame, health_rows: pl.DataFrame
) -> pl.DataFrame:
    """The `lr_vs_width` rows of one study (module docstring)."""
    main = study_members.filter(pl.col("sweep") == tags.MAIN)
    if main.is_empty():
        return frame([], SCHEMA)
    family, param = members.size_family(study_members), members.size_parametrization(study_members)
    cells = (
        main.select("size", "arm")
        .unique()
        .with_columns(
            pl.col("size").replace_strict(family, default=None).alias("family"), pl.lit(tags.MAIN).alias("sweep")
        )
    )
    choices = health_view.lr_choices(con, study, study_members, cells)
    steps = _grid_step(con, study)
    shape = {
        r["size"]: r
        for r in study_members.drop_nulls("d_model")
        .group_by("size")
        .agg(pl.col("d_model").max(), pl.col("n_layers").max(), pl.col("params_nonembedding").max())
        .iter_rows(named=True)
    }
    rows, health_list = [], health_rows.to_dicts()
    for c in choices.iter_rows(named=True):
        size, arm = c["size"], c["arm"]
        lr_runs = study_members.filter(
            (pl.col("size") == size) & (pl.col("arm") == arm) & pl.col("sweep").is_in(tags.LR_SWEEPS)
        )
        row = {
            "study": study,
            "family": c["family"],
            "parametrization": param.get(size, "sp"),
            "arm": arm,
            "size": size,
            **{k: (shape.get(size) or {}).get(k) for k in ("d_model", "n_layers", "params_nonembedding")},
            "lr": c["lr"],
            "bracketed": c["bracketed"],
            "cap_reached": c["cap_reached"],
            "n_points": c["n_points"],
            "lr_source": "lr_selection" if (size, arm) in steps else "lr sweep",
            "grid_step": steps.get((size, arm)) or _median_step(lr_runs["lr"].drop_nulls().to_list()),
        }
        notes = []
        if c["lr"] is None:
            notes.append("no lr chosen: every swept lr diverged or failed")
        else:
            group, source = _loss_at(study_members, size, arm, c["lr"])
            if group is None:
                notes.append(f"no completed run at lr {c['lr']:g}")
            else:
                n = len(group.losses)
                row |= {
                    "mean_loss": group.mean,
                    "std_loss": float(group.losses.std(ddof=1)) if n >= 2 else None,
                    "n": n,
                    "loss_source": source,
                }
        # The checks that qualify the cell's loss gap: its own numbers, not the ladder's (a speedup's).
        row["failed_checks"] = health.named_checks(health_list, [(c["family"], size, arm)], "loss_gap")["failed_checks"]
        row["note"] = "; ".join(notes) or None
        rows.append(row)
    return _against_base(frame(rows, SCHEMA))


def _against_base(rows: pl.DataFrame) -> pl.DataFrame:
    """Fill width_mult, lr_vs_base and grid_steps_from_base along each line, narrowest first."""
    out = []
    for _, line in rows.sort("d_model", "size", nulls_last=True).group_by(
        ["family", "parametrization", "arm"], maintain_order=True
    ):
        base = line.row(0, named=True)
        for r in line.iter_rows(named=True):
            if base["d_model"] and r["d_model"]:
                r["width_mult"] = r["d_model"] / base["d_model"]
            if base["lr"] and r["lr"]:
                r["lr_vs_base"] = r["lr"] / base["lr"]
                if r["grid_step"] and r["grid_step"] > 1:
                    r["grid_steps_from_base"] = round(math.log(r["lr_vs_base"]) / math.log(r["grid_step"]), 6)
            out.append(r)
    return frame(out, SCHEMA).sort("family", "parametrization", "arm", "d_model", "size")
