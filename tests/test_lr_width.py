"""The best base lr against width (analysis view `lr_vs_width`, its figure
and table in the report) and the parametrization in the transfer regret,
on a real staged study: sp and muP lines of two widths, stage 1 chosen by
`rlrs select`, stage 2 trained in-process, collected into DuckDB."""

from __future__ import annotations

import copy
import math
import statistics

import pytest
import yaml

from rlrs import analysis, db, report
from rlrs.cli import main as rlrs_main
from rlrs.study import load_study, tuned_plan, write_plan

from _cli_fixtures import cli_submit
from _data_fixtures import austen_corpus  # noqa: F401

TINY = {"n_layers": 1, "n_heads": 2}
STUDY = {
    "study": "widths",
    "executor": {"kind": "debug", "timeout_min": 5},
    "defaults": {
        "model": {"seq_len": 32, "init_scale": 0.15},
        "optim": {"lr": 0.048},
        "schedule": {"warmup_fraction": 0.05, "final_lr_fraction": 0.0444},
        "data": {"corpus": "austen", "tokenizer": "bytes", "eval_tokens": 2048},
        "train": {"steps": 30, "batch_size": 8, "eval_interval": 10, "checkpoint_interval": 10, "threads": 1},
    },
    "sizes": {
        "sp16": {"d_model": 16, **TINY},
        "sp32": {"d_model": 32, **TINY},
        "mup16": {"d_model": 16, **TINY, "parametrization": "mup", "base_d_model": 16},
        "mup32": {"d_model": 32, **TINY, "parametrization": "mup", "base_d_model": 16},
    },
    "arms": {"baseline": {}, "rlrs": {"multipliers": {"embedding": {"start": 5.0, "end": 0.667}}}},
    "lr_rule": "mup",
    "selection_seeds": [100],
    "seeds": [0, 1, 2],
    "min_reported_seeds": 3,
    "sweeps": {"lr": {"factors": [0.5, 2.0], "bracket": {"max_extra_points": 1}}},
}
LINE = {"sp16": "sp", "sp32": "sp", "mup16": "mup", "mup32": "mup"}
ARMS = ("baseline", "rlrs")


@pytest.fixture(scope="module")
def widths(austen_corpus, tmp_path_factory):  # noqa: F811
    """Stage 1 and 2 of the study trained for real (~60 tiny runs), collected; (db path, frames)."""
    root = tmp_path_factory.mktemp("widths")
    mp = pytest.MonkeyPatch()
    mp.setenv("RLRS_RESULTS", str(root / "results"))
    try:
        path = root / "widths.yaml"
        path.write_text(yaml.safe_dump(copy.deepcopy(STUDY)))
        assert rlrs_main(["select", str(path)]) == 0
        plan = tuned_plan(load_study(path), path)
        results = root / "results" / "widths"
        write_plan(plan, results / "plan.json")
        assert cli_submit([results / "runs" / rid for rid in plan.workflow_run_ids], executor="debug") == 0
        dbp = results / "rlrs.duckdb"
        assert (
            rlrs_main(
                [
                    "collect",
                    "--db",
                    str(dbp),
                    "--runs-root",
                    str(results / "runs"),
                    "--plan",
                    str(results / "plan.json"),
                ]
            )
            == 0
        )
    finally:
        mp.undo()
    con = db.connect(dbp, read_only=True)
    try:
        frames = analysis.compute(con, "widths")
    finally:
        con.close()
    return dbp, frames


def query(dbp, sql: str, params=()) -> list[tuple]:
    con = db.connect(dbp, read_only=True)
    try:
        return con.execute(sql, list(params)).fetchall()
    finally:
        con.close()


def test_every_cells_lr_is_its_selection_with_the_loss_of_its_reported_runs(widths):
    dbp, frames = widths
    got = {(r["size"], r["arm"]): r for r in frames["lr_vs_width"].iter_rows(named=True)}
    assert set(got) == {(s, a) for s in LINE for a in ARMS}
    chosen = {
        (s, a): (lr, br, cap)
        for s, a, lr, br, cap in query(dbp, "SELECT size, arm, chosen_lr, bracketed, cap_reached FROM lr_selection")
    }
    for (size, arm), r in got.items():
        assert (r["family"], r["parametrization"]) == ("dense", LINE[size])
        assert (r["lr"], r["bracketed"], r["cap_reached"]) == chosen[(size, arm)]
        assert (r["lr_source"], r["grid_step"], r["d_model"], r["n_layers"]) == ("lr_selection", 2.0, int(size[-2:]), 1)
        # the loss at it: the reported seeds' main runs at that lr, not the selection seed
        losses = [
            v
            for (v,) in query(
                dbp,
                "SELECT final_eval_loss FROM final_losses WHERE size = ? AND arm = ? AND sweep = 'main' AND lr = ? "
                "AND status = 'completed'",
                (size, arm, r["lr"]),
            )
        ]
        assert len(losses) == r["n"] == 3 and r["loss_source"] == "main"
        assert r["mean_loss"] == pytest.approx(statistics.mean(losses), rel=1e-12)
        assert r["std_loss"] == pytest.approx(statistics.stdev(losses), rel=1e-9)
    for par in ("sp", "mup"):
        for arm in ARMS:
            base, wide = got[(f"{par}16", arm)], got[(f"{par}32", arm)]
            assert (base["width_mult"], wide["width_mult"]) == (1.0, 2.0)
            assert (base["lr_vs_base"], base["grid_steps_from_base"]) == (1.0, 0.0)
            assert wide["lr_vs_base"] == pytest.approx(wide["lr"] / base["lr"], rel=1e-12)
            assert wide["grid_steps_from_base"] == round(math.log2(wide["lr"] / base["lr"]), 6)


def test_failed_checks_are_those_the_health_view_fails(widths):
    dbp, frames = widths
    health = frames["health"]
    order = [c.name for c in analysis.health.CHECKS]
    qualifying = set(order) - {"ladder_brackets_arm", "ladder_seeds"}  # those qualify the speedup only
    assert "ladder_brackets_arm" in set(health.filter(health["status"] == "fail")["check_name"])  # no ladder here
    for r in frames["lr_vs_width"].iter_rows(named=True):
        own = health.filter(
            (health["status"] == "fail")
            & (
                (health["scope"] == "study")
                | ((health["scope"] == "family") & (health["family"] == "dense"))
                | ((health["scope"] == "size") & (health["size"] == r["size"]))
                | ((health["scope"] == "arm") & (health["size"] == r["size"]) & (health["arm"] == r["arm"]))
            )
        )
        expected = sorted(set(own["check_name"]) & qualifying, key=order.index)
        assert r["failed_checks"] == (", ".join(expected) or None)
        bracket = health.filter(
            (health["check_name"] == "lr_bracketed") & (health["size"] == r["size"]) & (health["arm"] == r["arm"])
        )
        assert bracket["status"].to_list() == ["pass" if r["bracketed"] else "fail"]


def test_sizes_are_compared_within_their_parametrization(widths):
    _, frames = widths
    regret = {(r["parameter"], r["size"]): r for r in frames["regret"].iter_rows(named=True)}
    assert {k: (r["parametrization"], r["reference_size"]) for k, r in regret.items()} == {
        (f"lr ({arm})", size): (par, f"{par}16") for arm in ARMS for par, size in (("sp", "sp32"), ("mup", "mup32"))
    }
    falls = frames["health"].filter(frames["health"]["check_name"] == "loss_falls_with_size")
    assert sorted(falls.select("size", "arm").iter_rows()) == sorted((s, a) for s in ("mup32", "sp32") for a in ARMS)
    for size, msg in falls.select("size", "message").iter_rows():
        assert f"at {size[:-2]}16" in msg  # the next smaller size of its own line


def test_the_views_columns_are_documented_in_the_database(widths):
    dbp, _ = widths
    for view, docs in (("lr_vs_width", analysis.lr_width.COLUMN_DOCS), ("regret", analysis.regret.REGRET_DOCS)):
        got = dict(query(dbp, "SELECT column_name, comment FROM duckdb_columns() WHERE table_name = ?", (view,)))
        assert got == docs


def test_the_report_draws_lr_against_width_and_says_which_checks_fail(widths, tmp_path):
    dbp, frames = widths
    out = tmp_path / "index.html"
    built = report.write_report("widths", dbp, out, figures=False)
    assert "lr_vs_width" in built.figures and "lr_vs_width" not in built.missing
    (points,) = built.figures["lr_vs_width"]["datasets"].values()  # one point per (size, arm), both panels
    assert {(p["size"], p["arm"], p["lr"], p["lr_choice"]) for p in points} == {
        (r["size"], r["arm"], r["lr"], "bracketed" if r["bracketed"] else "unbracketed")
        for r in frames["lr_vs_width"].iter_rows(named=True)
    }
    html = out.read_text()
    assert 'id="lr-width-table"' in html
    for r in frames["lr_vs_width"].iter_rows(named=True):
        mark = "(bracketed)" if r["bracketed"] else "(UNBRACKETED: "
        assert f"<td>{r['lr']:.3g} {mark}" in html
        if r["failed_checks"]:
            assert f"n=3; fails: {r['failed_checks']})" in html
