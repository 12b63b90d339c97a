"""The tag contract between expansion and analysis (rlrs.tags), on a study
with two relative arms: every derived run is referred to the arm its sweep
names, never to the other relative arm or to the baseline."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from rlrs import analysis, db, tags
from rlrs.analysis import members
from rlrs.config import load_file
from rlrs.study import expand

from _analysis_fixtures import StudyDB

SMOKE = Path(__file__).resolve().parent.parent / "workflow" / "configs" / "smoke.yaml"
MUP = {"embedding": (2.0, 0.5), "head": (0.5, 0.5)}


def two_relative_arms() -> dict:
    """The smoke study with a second relative arm and every derived sweep on it."""
    study = load_file(SMOKE, "study") | {"study": "two", "seeds": [0]}  # unstaged: one seed, its lr sweep as is
    for key in ("selection_seeds", "min_reported_seeds"):
        study.pop(key)
    study["arms"]["rlrs_mup"] = {"multipliers": {c: {"start": s, "end": e} for c, (s, e) in MUP.items()}}
    study["sweeps"] = copy.deepcopy(study["sweeps"]) | {
        "usweep": {"arm": "rlrs_mup", "factors": {"tiny": [2.0]}, "components": ["embedding"], "which": ["start"]},
        "removal": {"arm": "rlrs_mup"},
        "contribution": {"arm": "rlrs_mup", "into": "rlrs"},
    }
    return study


def test_expansion_writes_exactly_the_tags_the_analysis_reads():
    requests = expand(two_relative_arms())
    by_sweep: dict[str, list[dict]] = {}
    for _, _, labels in requests:
        by_sweep.setdefault(labels["sweep"], []).append(labels)
    assert {lb["arm"] for lb in by_sweep["usweep"]} == {"rlrs_mup"}
    assert {lb["arm"] for lb in by_sweep["removal"]} == {"rlrs_mup"}
    assert {lb["arm"] for lb in by_sweep["contribution"]} == {"rlrs"}  # the `into` arm
    assert {lb["tags"]["source_arm"] for lb in by_sweep["contribution"]} == {"rlrs_mup"}
    # every component where mup's table differs from rlrs's (mup leaves attention and ffn at (1, 1))
    assert sorted(lb["tags"]["component"] for lb in by_sweep["contribution"]) == [
        "attention",
        "embedding",
        "ffn",
        "head",
    ]
    read = set(tags.TAG_COLUMNS)
    for sweep in (tags.USWEEP, tags.REMOVAL, tags.CONTRIBUTION):
        for lb in by_sweep[sweep]:
            assert set(lb["tags"]) <= read, (sweep, lb["tags"])


@pytest.fixture
def two_arm_db(tmp_path) -> Path:
    """Main runs of baseline (3.0), rlrs (2.8) and rlrs_mup (2.6); a
    contribution of rlrs_mup's embedding into rlrs (2.75); a removal of
    rlrs_mup's embedding (2.7); a U-sweep of an arm outside `main`."""
    s = StudyDB(
        study="two",
        config={
            "study": "two",
            "sweeps": {"ladder": {"arm": "baseline"}, "contribution": {"arm": "rlrs_mup", "into": "rlrs"}},
        },
    )
    s.run(arm="baseline", loss=3.0)
    s.run(arm="rlrs", loss=2.8)
    s.run(arm="rlrs_mup", loss=2.6, multipliers=MUP)
    s.run(arm="rlrs", sweep="contribution", loss=2.75, tags=tags.contribution("embedding", "rlrs_mup"))
    s.run(arm="rlrs_mup", sweep="removal", loss=2.7, tags=tags.removal("embedding"))
    for f, loss in ((0.5, 2.9), (2.0, 2.95)):  # rlrs_wide is not a main arm: no factor-1 reference exists
        s.run(arm="rlrs_wide", sweep="usweep", loss=loss, tags=tags.usweep("head", "end", f))
    return s.write(tmp_path / "two.duckdb")


def test_ablations_refer_to_the_arm_the_sweep_names(two_arm_db):
    con = db.connect(two_arm_db)
    try:
        ab = analysis.compute(con, "two")["ablation"]
        assert set(tags.TAG_COLUMNS) <= set(members.load_members(con, "two").columns)
    finally:
        con.close()
    rows = {r["kind"]: r for r in ab.iter_rows(named=True)}
    assert rows["contribution"]["reference_arm"] == "rlrs"
    assert rows["contribution"]["reference_loss"] == pytest.approx(2.8)
    assert rows["contribution"]["delta"] == pytest.approx(2.75 - 2.8)
    assert rows["removal"]["reference_arm"] == "rlrs_mup"
    assert rows["removal"]["delta"] == pytest.approx(2.7 - 2.6)


def test_usweep_of_an_arm_outside_main_is_not_given_another_arms_point(two_arm_db):
    con = db.connect(two_arm_db)
    try:
        us = analysis.compute(con, "two")["usweep"]
    finally:
        con.close()
    assert us.select("base_arm", "factor", "mean_loss").rows() == [("rlrs_wide", 0.5, 2.9), ("rlrs_wide", 2.0, 2.95)]
