"""A study's runs as the analysis sees them: one row per (run, sweep) from
the plan, grouped by what differs only by seed, and the rules that pick the
groups a comparison uses (an arm's best lr, the baseline's ladder).

Conventions (see rlrs.analysis): only `completed` runs count; groups are
deduplicated by run id; the best lr is the lowest mean final loss among
groups without a diverged seed, ranked on the seeds they all share.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import duckdb
import numpy as np
import polars as pl

from rlrs import tags
from rlrs.db import has_table

BASELINE = "baseline"

# Fixed output schemas: empty studies still produce typed, queryable tables.
F, I, S = pl.Float64, pl.Int64, pl.Utf8  # noqa: E741


def frame(rows: list[dict], schema: dict) -> pl.DataFrame:
    """A frame with exactly `schema`'s columns and types, even when empty."""
    return pl.DataFrame([{k: r.get(k) for k in schema} for r in rows], schema=schema, orient="row")


# ---------------------------------------------------------------- loading
def study_names(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Every study the database knows (plan, runs or studies table)."""
    names: set[str] = set()
    for table, col in (("studies", "name"), ("plan", "study"), ("runs", "study")):
        if has_table(con, table):
            names |= {
                r[0] for r in con.execute(f"SELECT DISTINCT {col} FROM {table} WHERE {col} IS NOT NULL").fetchall()
            }
    return sorted(names)


def _tag_column(key: str, sql_type: str) -> str:
    value = f"json_extract_string(m.tags, '$.{key}')"
    return (f"TRY_CAST({value} AS {sql_type})" if sql_type != "VARCHAR" else value) + f" AS {key}"


# The tags the sweeps write (rlrs.tags), unpacked into typed columns.
_TAG_SELECT = ",\n               ".join(_tag_column(k, t) for k, t in tags.TAG_COLUMNS.items())


def load_members(con: duckdb.DuckDBPyConnection, study: str) -> pl.DataFrame:
    """One row per (run id, sweep) of `study`, with the run's results.

    Membership comes from `plan` (a run can serve several sweeps); runs that
    were ingested without a plan row fall back to their own labels. Planned
    runs with no result yet get status `missing`. Sweep tags are unpacked
    into typed columns (rlrs.tags.TAG_COLUMNS).
    """
    has_plan = has_table(con, "plan")
    plan_part = (
        "SELECT run_id, size, arm, sweep, CAST(tags AS VARCHAR) AS tags FROM plan WHERE study = $study"
        if has_plan
        else "SELECT NULL::VARCHAR run_id, NULL size, NULL arm, NULL sweep, NULL tags WHERE false"
    )
    not_planned = "AND run_id NOT IN (SELECT run_id FROM plan WHERE study = $study)" if has_plan else ""
    query = f"""
        WITH m AS (
            {plan_part}
            UNION
            SELECT run_id, size, arm, sweep, CAST(tags AS VARCHAR) FROM runs
            WHERE study = $study {not_planned}
        )
        SELECT m.run_id, m.size, m.arm, m.sweep, m.tags,
               r.seed, r.lr, r.steps, coalesce(r.status, 'missing') AS status,
               CASE WHEN r.status = 'completed' THEN r.final_eval_loss END AS final_eval_loss,
               r.error, coalesce(r.moe, false) AS moe, r.d_model, r.n_layers,
               CASE WHEN r.run_id IS NOT NULL
                    THEN coalesce(json_extract_string(r.config, '$.model.parametrization'), 'sp') END
                    AS parametrization,
               r.params_total, r.params_active, r.params_nonembedding, r.params_active_nonembedding,
               {_TAG_SELECT}
        FROM m LEFT JOIN runs r USING (run_id)
        ORDER BY m.size, m.arm, m.sweep, m.run_id
    """
    return con.sql(query, params={"study": study}).pl()


def completed(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.filter(pl.col("status") == "completed")


def size_order(members: pl.DataFrame) -> list[str]:
    """Sizes from smallest to largest non-embedding parameter count (name as
    tie-break). Runs without a size label (standalone runs) have no place in
    a size comparison."""
    sizes = (
        members.drop_nulls("size")
        .group_by("size")
        .agg(pl.col("params_nonembedding").max().alias("p"))
        .sort(["p", "size"], nulls_last=True)
    )
    return sizes["size"].to_list()


def size_family(members: pl.DataFrame) -> dict[str, str]:
    """size -> 'moe' or 'dense': sizes are compared along a line within a family only."""
    rows = members.group_by("size").agg(pl.col("moe").any())
    return {r["size"]: "moe" if r["moe"] else "dense" for r in rows.iter_rows(named=True)}


def size_parametrization(members: pl.DataFrame) -> dict[str, str]:
    """size -> 'sp' or 'mup' (of its ingested runs; 'sp' before any is): sizes
    are compared along a line within one family and parametrization."""
    rows = members.group_by("size").agg(pl.col("parametrization").drop_nulls().first())
    return {r["size"]: r["parametrization"] or "sp" for r in rows.iter_rows(named=True)}


def size_params(members: pl.DataFrame) -> dict[str, tuple[int | None, int | None]]:
    rows = members.group_by("size").agg(pl.col("params_nonembedding").max(), pl.col("params_active_nonembedding").max())
    return {r["size"]: (r["params_nonembedding"], r["params_active_nonembedding"]) for r in rows.iter_rows(named=True)}


# ---------------------------------------------------------------- groups
@dataclass
class Group:
    """Runs differing only by seed (deduplicated by run id)."""

    size: str
    arm: str
    lr: float
    steps: int
    losses: np.ndarray  # completed runs' final losses, ordered by seed
    run_ids: list[str]  # completed runs, same order
    seeds: list[int]
    excluded: dict[str, str] = field(default_factory=dict)  # run id -> status, non-completed runs

    @property
    def n_excluded(self) -> int:
        return len(self.excluded)

    @property
    def n_diverged(self) -> int:
        return sum(st == "diverged" for st in self.excluded.values())

    @property
    def mean(self) -> float:
        return float(self.losses.mean()) if len(self.losses) else math.nan

    def by_seed(self) -> dict[int, float]:
        """seed -> final loss of the completed runs (the estimates' input)."""
        return {int(s): float(v) for s, v in zip(self.seeds, self.losses)}


def seed_groups(frame: pl.DataFrame) -> list[Group]:
    """Group runs by (size, arm, lr, steps), one row per run id."""
    if frame.is_empty():
        return []
    runs = frame.unique(subset="run_id", keep="first").sort(["size", "arm", "lr", "steps", "seed", "run_id"])
    out = []
    for key, part in runs.group_by(["size", "arm", "lr", "steps"], maintain_order=True):
        done = completed(part)
        out.append(
            Group(
                size=key[0],
                arm=key[1],
                lr=key[2],
                steps=key[3],
                losses=done["final_eval_loss"].to_numpy().astype(float),
                run_ids=done["run_id"].to_list(),
                seeds=done["seed"].to_list(),
                excluded=dict(part.filter(pl.col("status") != "completed").select("run_id", "status").iter_rows()),
            )
        )
    return out


def best_group(groups: list[Group]) -> Group | None:
    """The group with the lowest mean final loss over its completed runs;
    ties go to the first (lowest lr). Groups where a seed diverged compete
    only when every group has one: an lr that diverges on some seeds is
    unstable, and the mean of its survivors would flatter it.

    When the groups hold different seeds (a sweep point with 1 seed against
    main runs with 3, or a seed still missing), they are ranked on the seeds
    they all share: the minimum of one noisy draw against a mean of three
    would favour the single draws (winner's curse). The chosen group then
    keeps all its seeds for the comparison."""
    pool = lr_pool(groups)
    if not pool:
        return None
    shared = shared_seeds(pool)
    return min(pool, key=lambda g: mean_over(g, shared))


def lr_pool(groups: list[Group]) -> list[Group]:
    """The groups that compete for the best lr: those with completed runs and
    no diverged seed, or all with completed runs when every one has one."""
    done = [g for g in groups if len(g.losses)]
    return [g for g in done if g.n_diverged == 0] or done


def shared_seeds(groups: list[Group]) -> set[int] | None:
    """Seeds completed in every group, or None when they all hold the same
    seeds or share none (then each group's full mean is used)."""
    sets = [set(g.seeds) for g in groups]
    shared = set.intersection(*sets) if sets else set()
    return shared if shared and any(s != shared for s in sets) else None


def mean_over(g: Group, seeds: set[int] | None) -> float:
    if seeds is None:
        return g.mean
    return float(np.mean([loss for loss, seed in zip(g.losses, g.seeds) if seed in seeds]))


def choice_notes(groups: list[Group], chosen: Group | None) -> list[str]:
    """Say when the lr choice was shaped by diverged seeds."""
    if chosen is None:
        return []
    notes = [
        f"lr {g.lr:g} not chosen despite a lower mean: {g.n_diverged} diverged seed(s)"
        for g in groups
        if g is not chosen and g.n_diverged and len(g.losses) and g.mean < chosen.mean
    ]
    if chosen.n_diverged:
        notes.append(f"compared lr {chosen.lr:g} has {chosen.n_diverged} diverged seed(s) (every lr has some)")
    shared = shared_seeds(lr_pool(groups))
    if shared is not None:
        notes.append(f"best lr chosen on the seed(s) every lr point has ({', '.join(map(str, sorted(shared)))})")
    lrs = sorted({g.lr for g in groups if len(g.losses)})
    if len(lrs) >= 3 and chosen.lr in (lrs[0], lrs[-1]):
        notes.append(f"best lr {chosen.lr:g} is at the edge of the sweep: the optimum may lie beyond it")
    return notes


def main_steps(members: pl.DataFrame, size: str, arm: str) -> int | None:
    main = members.filter((pl.col("size") == size) & (pl.col("arm") == arm) & (pl.col("sweep") == tags.MAIN))
    steps = main["steps"].drop_nulls()
    return int(steps.max()) if len(steps) else None


def lr_candidates(members: pl.DataFrame, size: str, arm: str) -> list[Group]:
    """The arm's groups at `size` that compete for its best lr: main and
    lr-sweep runs at its main length."""
    steps = main_steps(members, size, arm)
    if steps is None:
        return []
    return seed_groups(
        members.filter(
            (pl.col("size") == size)
            & (pl.col("arm") == arm)
            & pl.col("sweep").is_in(tags.LR_SWEEPS)
            & (pl.col("steps") == steps)
        )
    )


def compared_group(members: pl.DataFrame, size: str, arm: str) -> Group | None:
    """The arm at `size` as compared: its best lr among the main and lr-sweep
    runs at its main length (just the main runs when there is no lr sweep),
    as measured (without a staged study's stage-1 runs: `measured`)."""
    return measured(best_group(lr_candidates(members, size, arm)), members)


def measured(group: Group | None, members: pl.DataFrame) -> Group | None:
    """The group without a staged study's stage-1 (selection) runs. Stage 1
    chose the lr on its selection seeds, so their losses at the chosen lr
    are the minimum of noisy draws (winner's curse): the measurement is stage
    2's alone, on the reported seeds (protocol spec, section 2). A group that
    holds only selection runs (stage 2 not run yet) comes back empty."""
    if group is None:
        return None
    stage1 = stage1_run_ids(members)
    if not stage1 & (set(group.run_ids) | set(group.excluded)):
        return group
    keep = [i for i, rid in enumerate(group.run_ids) if rid not in stage1]
    return replace(
        group,
        losses=group.losses[keep],
        run_ids=[group.run_ids[i] for i in keep],
        seeds=[group.seeds[i] for i in keep],
        excluded={rid: st for rid, st in group.excluded.items() if rid not in stage1},
    )


def stage1_run_ids(members: pl.DataFrame) -> set[str]:
    """The run ids of a staged study's stage-1 (selection) runs."""
    return set(members.filter(pl.col("stage") == tags.SELECT)["run_id"].to_list())


def stage1_seeds(group: Group | None, members: pl.DataFrame) -> list[int]:
    """The seeds of `group`'s stage-1 runs that `measured` leaves out (for notes)."""
    if group is None:
        return []
    stage1 = stage1_run_ids(members)
    return sorted(seed for rid, seed in zip(group.run_ids, group.seeds) if rid in stage1)


def baseline_ladder(members: pl.DataFrame, size: str, baseline: str = BASELINE) -> list[Group]:
    """The baseline's points L(T) at `size`, shortest first, all at ONE lr:
    the baseline's best lr at its main length (main and lr-sweep runs).

    Mixing lrs across lengths would compare the arm with a baseline trained
    worse at some lengths (and bend L(T)), so ladder runs at any other lr are
    left out; with fewer than two lengths left there is no ladder estimate."""
    best = compared_group(members, size, baseline)
    if best is None:
        return []
    cand = members.filter(
        (pl.col("size") == size)
        & (pl.col("arm") == baseline)
        & pl.col("sweep").is_in(tags.LENGTH_SWEEPS)
        & (pl.col("lr") == best.lr)
    )
    points = [measured(g, members) for g in seed_groups(cand)]
    return sorted((g for g in points if g.run_ids or g.excluded), key=lambda g: g.steps)


def ladder_lrs(members: pl.DataFrame, size: str, baseline: str = BASELINE) -> list[float]:
    """The lrs the baseline's ladder runs were trained at (for notes)."""
    runs = members.filter((pl.col("size") == size) & (pl.col("arm") == baseline) & (pl.col("sweep") == tags.LADDER))
    return sorted(set(runs["lr"].drop_nulls().to_list()))


def excluded_note(groups: list[Group]) -> list[str]:
    """'excluded N non-completed run(s) (M diverged)', each run counted once."""
    excluded = {rid: st for g in groups for rid, st in g.excluded.items()}
    if not excluded:
        return []
    div = sum(st == "diverged" for st in excluded.values())
    return [f"excluded {len(excluded)} non-completed run(s) ({div} diverged)"]


# ---------------------------------------------------------------- everything at once
def baseline_evals(con: duckdb.DuckDBPyConnection, members: pl.DataFrame, baseline: str = BASELINE) -> pl.DataFrame:
    """Eval points (run_id, step, eval_loss) of the completed baseline runs."""
    ids = completed(members.filter(pl.col("arm") == baseline)).select("run_id").unique()
    con.register("_eval_ids", ids)
    try:
        return con.sql(
            "SELECT run_id, step, eval_loss FROM metrics JOIN _eval_ids USING (run_id) "
            "WHERE eval_loss IS NOT NULL ORDER BY run_id, step"
        ).pl()
    finally:
        con.unregister("_eval_ids")


def study_parts(con: duckdb.DuckDBPyConnection, study: str) -> set[str]:
    """The optional parts the study file has (today: 'tune' for a tune block)."""
    if not has_table(con, "studies"):
        return set()
    got = con.execute(
        "SELECT json_extract(config, '$.tune') IS NOT NULL FROM studies WHERE name = ?", [study]
    ).fetchall()
    return {"tune"} if got and got[0][0] else set()


def baseline_arm(con: duckdb.DuckDBPyConnection, study: str) -> str:
    """The study's baseline: the arm its ladder runs (or its contribution
    sweep adds into), as the study file says; `baseline` by default."""
    if has_table(con, "studies"):
        got = con.execute(
            "SELECT coalesce(json_extract_string(config, '$.sweeps.ladder.arm'), "
            "json_extract_string(config, '$.sweeps.contribution.into')) FROM studies WHERE name = ?",
            [study],
        ).fetchall()
        if got and got[0][0]:
            return got[0][0]
    return BASELINE
