"""Which laws a study's scaling runs get, on constructed databases whose
losses follow a published law exactly: the joint-MoE law over E, the
fine-grained law over G, Chinchilla per (family, arm, E, G); each fit gives
the law's coefficients back, and the views carry the settings."""

from __future__ import annotations

import re

import numpy as np
import polars as pl
import pytest

from rlrs import analysis, db, tags
from rlrs.analysis import scaling as sl
from rlrs.analysis.scaling.study import GRID_POINTS

from _analysis_fixtures import StudyDB

N = np.geomspace(1e7, 1e9, 4)
D = np.geomspace(1e9, 1e11, 4).round()
SETTINGS = {"bootstrap": 0, "starts": 5, "holdout": 0}


def law_study(law: str, third: str, values, settings=None) -> StudyDB:
    """One moe arm's scaling runs at N x D x `values` of E or G, losses from the published law."""
    s = StudyDB(study="law", config={"study": "law", "scaling": SETTINGS | (settings or {})})
    truth = sl.PUBLISHED[law]
    for v in values:
        for n in N:
            for d in D:
                pts = sl.Points(np.array([n]), np.array([d]), np.ones(1), **{third: np.array([float(v)])})
                loss = float(sl.get_law(law).predict(truth, pts)[0])
                shape = (
                    {"n_experts": int(v), "granularity": 1} if third == "e" else {"n_experts": 8, "granularity": int(v)}
                )
                counts = {
                    k: int(n)
                    for k in ("params_total", "params_active", "params_nonembedding", "params_active_nonembedding")
                }
                s.run(
                    size=f"n{n:.0e}",
                    arm="baseline",
                    sweep=tags.SCALING,
                    tags=tags.scaling(int(d)),
                    loss=loss,
                    steps=20,
                    moe=True,
                    columns=shape | counts,
                )
    return s


def frames_of(s: StudyDB, tmp_path) -> dict[str, pl.DataFrame]:
    con = db.connect(s.write(tmp_path / "law.duckdb"), read_only=True)
    try:
        return analysis.compute(con, s.study)
    finally:
        con.close()


@pytest.mark.parametrize("law,third,values", [("joint_moe", "e", (1, 4, 8, 32)), ("fine_grained", "g", (1, 2, 4, 8))])
def test_the_law_over_e_or_g_is_fitted_and_gives_the_published_coefficients_back(law, third, values, tmp_path):
    frames = frames_of(law_study(law, third, values), tmp_path)
    fit = frames["scaling_fit"]
    assert set(fit["law"]) == {"chinchilla", law}
    # Chinchilla once per fixed E or G (4 values), the law over them once.
    assert (
        fit.filter(pl.col("law") == "chinchilla")[third.replace("e", "experts").replace("g", "granularity")].n_unique()
        == 4
    )
    got = {r["parameter"]: r for r in fit.filter(pl.col("law") == law).iter_rows(named=True)}
    for k, v in sl.PUBLISHED[law].items():
        assert got[k]["value"] == pytest.approx(v, rel=2e-3, abs=1e-4), k
    row = got["c"]
    assert row["n_points"] == 64 and row["rmse_train"] < 1e-6 and row["rmse_heldout"] is None
    assert row["n_kind"] == ("active" if law == "joint_moe" else "nonembedding") and row["family"] == "moe"
    points = frames["scaling_points"].filter(pl.col("law") == law)
    assert points.height == 64 and not points["held_out"].any()
    assert sorted(set(points["experts" if third == "e" else "granularity"])) == [float(v) for v in values]
    # No other arm: no multiplier; the frontier and the iso-loss lines per E (or G).
    assert frames["compute_multiplier"].height == 0
    front = frames["scaling_frontier"].filter(pl.col("law") == law)
    assert front.height == 4 * GRID_POINTS and front["extrapolated"].any()


def test_settings_choose_the_parameter_count_the_holdout_and_the_regime(tmp_path):
    s = law_study(
        "joint_moe",
        "e",
        (1, 8),
        {
            "n_params": {"joint_moe": "total", "chinchilla": "active"},
            "holdout": 0.25,
            "tokens_per_param": {"max": 5000},
            "tokens": {"min": 2e9},
        },
    )
    frames = frames_of(s, tmp_path)
    pts = frames["scaling_points"]
    assert set(zip(pts["law"], pts["n_kind"])) == {("joint_moe", "total"), ("chinchilla", "active")}
    assert pts["tokens_per_param"].max() <= 5000  # 1e11 / 1e7 = 1e4 left out
    assert pts["tokens"].min() == D[1]  # the 1e9-token budget left out at every N
    joint = pts.filter(pl.col("law") == "joint_moe")
    # 2 E x (4 N x 3 budgets - the one N=1e7 point over 5000 tokens per parameter)
    assert joint.height == 22 and joint["held_out"].sum() == round(0.25 * 22)
    assert joint.filter(pl.col("held_out"))["compute"].min() >= joint.filter(~pl.col("held_out"))["compute"].max()


def test_no_scaling_runs_no_rows(tmp_path):
    s = StudyDB(study="law")
    s.run(arm="baseline", loss=3.0)
    frames = frames_of(s, tmp_path)
    for name in ("scaling_points", "scaling_fit", "compute_multiplier", "scaling_frontier", "scaling_iso_loss"):
        assert frames[name].height == 0 and frames[name].schema == analysis.VIEWS[name].schema


def swept_scaling_study(sweeps: dict | None = None) -> StudyDB:
    """Dense sizes s1-s4 (1e5 .. 6.4e6 non-embedding parameters) x 3 token
    budgets per arm, losses from the published Chinchilla law (rlrs: as if
    it saw 1.5x the tokens), every scaling run at lr 1e-3; each (size, arm)
    swept over lr 5e-4 .. 2e-3 at 1000 steps with 1e-3 best (bracketed),
    except the baseline at s3, swept over 1e-3 .. 4e-3, whose best is 2e-3:
    its scaling points ran at another lr than the sweep chose there.
    `sweeps`: (size, arm) -> [(lr, loss)] in place of a cell's sweep."""
    s = StudyDB(study="sw", config={"study": "sw", "scaling": SETTINGS})
    truth = sl.PUBLISHED["chinchilla"]
    for arm, gain in (("baseline", 1.0), ("rlrs", 1.5)):
        for i, size in enumerate(("s1", "s2", "s3", "s4")):
            n = s.params(size)
            for d in (1e8, 3e8, 1e9):
                pts = sl.Points(np.array([float(n)]), np.array([gain * d]), np.ones(1))
                loss = float(sl.get_law("chinchilla").predict(truth, pts)[0])
                s.run(size=size, arm=arm, sweep=tags.SCALING, tags=tags.scaling(int(d)), loss=loss, steps=20)
            lrs = (1e-3, 2e-3, 4e-3) if (size, arm) == ("s3", "baseline") else (5e-4, 1e-3, 2e-3)
            points = (sweeps or {}).get((size, arm), list(zip(lrs, (2.6 - 0.1 * i, 2.5 - 0.1 * i, 2.55 - 0.1 * i))))
            for lr, loss in points:
                s.run(size=size, arm=arm, sweep="lr", lr=lr, steps=1000, loss=loss, tags=tags.lr(lr, lr / 1e-3))
    return s


def test_every_scaling_number_names_the_checks_of_the_points_it_rests_on(tmp_path):
    frames = frames_of(swept_scaling_study(), tmp_path)
    health = frames["health"].filter(pl.col("check_name") == "scaling_lr").sort("size", "arm")
    assert health.select("size", "arm", "status").rows() == [
        (size, arm, "fail" if (size, arm) == ("s3", "baseline") else "pass")
        for size in ("s1", "s2", "s3", "s4")
        for arm in ("baseline", "rlrs")
    ]
    bad = health.filter(pl.col("status") == "fail").row(0, named=True)
    assert bad["message"] == (
        "the scaling points ran at lr 0.001, not at the lr the sweep chose at this size (0.002): "
        "the fit mixes the arm's effect with lr mis-tuning"
    )
    assert bad["value"] == 1e-3
    # A point: its own cell's checks.
    pts = frames["scaling_points"]
    assert pts.height == 24 and set(pts["size"]) == {"s1", "s2", "s3", "s4"}
    failed = pts.filter(pl.col("failed_checks").is_not_null()).select("size", "arm", "failed_checks").unique().rows()
    assert failed == [("s3", "baseline", "scaling_lr")] and pts["warned_checks"].null_count() == 24
    # A fit: every cell among its points; a multiplier: both fits' cells.
    fit = frames["scaling_fit"]
    assert set(fit.filter(pl.col("arm") == "baseline")["failed_checks"]) == {"scaling_lr"}
    assert (
        fit.filter(pl.col("arm") == "rlrs")["failed_checks"].null_count() == fit.filter(pl.col("arm") == "rlrs").height
    )
    mult = frames["compute_multiplier"]
    assert mult.height == GRID_POINTS and set(mult["failed_checks"]) == {"scaling_lr"}
    assert mult["multiplier"].min() > 1  # rlrs reaches the baseline's loss with less compute
    for name in ("scaling_points", "scaling_fit", "compute_multiplier"):
        assert frames[name].schema == analysis.VIEWS[name].schema


def test_a_scaling_cell_never_swept_or_at_the_sweeps_edge_fails_scaling_lr(tmp_path):
    # s4's rlrs sweep: 1e-3 is its lowest loss and its highest lr; s1's baseline: no lr sweep at all;
    # s1's rlrs sweep is best at 2e-3, its edge.
    s = swept_scaling_study(
        {
            ("s4", "rlrs"): [(2.5e-4, 2.6), (5e-4, 2.55), (1e-3, 2.5)],
            ("s1", "baseline"): [],
            ("s1", "rlrs"): [(5e-4, 2.6), (1e-3, 2.55), (2e-3, 2.5)],
        }
    )
    frames = frames_of(s, tmp_path)
    rows = {
        (r["size"], r["arm"]): r
        for r in frames["health"].filter(pl.col("check_name") == "scaling_lr").iter_rows(named=True)
    }
    assert rows[("s4", "rlrs")]["status"] == "fail" and rows[("s4", "rlrs")]["message"] == (
        "the scaling points' lr 0.001 is at the edge of its sweep: the optimum may lie beyond it, so the fit (and a "
        "compute multiplier over it) mixes the arm's effect with lr mis-tuning"
    )
    assert rows[("s1", "baseline")]["message"] == (
        "the scaling points ran at lr 0.001, but no lr sweep ran at this size: not shown to be the best lr"
    )
    # At s1 the points at 1e-3 are another lr than the rlrs sweep's best (which is at its edge, too).
    assert "not at the lr the sweep chose at this size (0.002)" in rows[("s1", "rlrs")]["message"]
    assert {k for k, r in rows.items() if r["status"] == "fail"} == {
        ("s1", "baseline"),
        ("s1", "rlrs"),
        ("s3", "baseline"),
        ("s4", "rlrs"),
    }
    assert set(frames["compute_multiplier"]["failed_checks"]) == {"scaling_lr"}


def test_the_report_prints_the_failed_checks_beside_every_fit_and_multiplier_and_draws_them_hollow(tmp_path):
    import vl_convert as vlc

    from rlrs import report
    from rlrs.vega import VL_VERSION

    from _figure_fixtures import svg_points

    path = swept_scaling_study().write(tmp_path / "sw.duckdb")
    built = report.write_report("sw", path, tmp_path / "out" / "index.html", figures=False)
    html = built.html
    fits = html.split("<h3>Scaling-law fits</h3>")[1].split("</table>")[0]
    rows = [re.findall(r"<td>(.*?)</td>", r) for r in fits.split("</tr>") if "<td>" in r]
    assert {(r[2], r[-1]) for r in rows} == {("baseline", "fail: scaling_lr"), ("rlrs", "no failed or warned check")}
    mult = html.split("<h3>Compute multiplier</h3>")[1].split("</table>")[0]
    rows = [re.findall(r"<td>(.*?)</td>", r) for r in mult.split("</tr>") if "<td>" in r]
    assert len(rows) == 2 and {r[-1] for r in rows} == {"fail: scaling_lr"}
    # Every multiplier point hollow (white), under the legend entry and the subtitle that say why.
    svg = vlc.vegalite_to_svg(built.figures["compute_multiplier"], vl_version=VL_VERSION)
    points = svg_points(svg)
    assert len(points) == GRID_POINTS and {p["fill"] for p in points} == {"white"}
    assert {p["failed health checks"] for p in points} == {"scaling_lr"}
    assert "blocked: failed checks" in svg and "every multiplier here is under a failed health check" in svg
