"""Which laws a study's scaling runs get, on constructed databases whose
losses follow a published law exactly: the joint-MoE law over E, the
fine-grained law over G, Chinchilla per (family, arm, E, G); each fit gives
the law's coefficients back, and the views carry the settings."""

from __future__ import annotations

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
        },
    )
    frames = frames_of(s, tmp_path)
    pts = frames["scaling_points"]
    assert set(zip(pts["law"], pts["n_kind"])) == {("joint_moe", "total"), ("chinchilla", "active")}
    assert pts["tokens_per_param"].max() <= 5000  # 1e11 / 1e7 = 1e4 left out
    joint = pts.filter(pl.col("law") == "joint_moe")
    assert joint.height == 30 and joint["held_out"].sum() == round(0.25 * 30)
    assert joint.filter(pl.col("held_out"))["compute"].min() >= joint.filter(~pl.col("held_out"))["compute"].max()


def test_no_scaling_runs_no_rows(tmp_path):
    s = StudyDB(study="law")
    s.run(arm="baseline", loss=3.0)
    frames = frames_of(s, tmp_path)
    for name in ("scaling_points", "scaling_fit", "compute_multiplier", "scaling_frontier", "scaling_iso_loss"):
        assert frames[name].height == 0 and frames[name].schema == analysis.VIEWS[name].schema
