"""The health checks through the database: synthetic run directories ->
the real `rlrs collect` -> the `health` view, with the study's `health:`
overrides read from its plan. Each asserted row is a condition that holds
(flagged) or does not (passes) by construction."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pytest

from rlrs.cli import main as rlrs_main

from _db_fixtures import loss_at, make_run_dir

STUDY = "hdb"
PARAMS = {"s": 80_000, "m": 320_000, "moe-s": 80_000}  # active non-embedding; moe-s matches dense s


def build(root: Path) -> Path:
    runs, n = [], 0

    def add(size, arm, offset, *, steps=100, lr=3e-3, sweep="main", tags=None, seeds=(0, 1, 2)):
        nonlocal n
        for seed in seeds:
            n += 1
            rid = f"{n:012x}"
            meta = {"study": STUDY, "size": size, "arm": arm, "sweep": sweep, "tags": tags or {}}
            d = make_run_dir(
                root / "runs" / rid,
                rid,
                steps,
                moe=size.startswith("moe"),
                lr=lr,
                seed=seed,
                meta=meta,
                offset=offset + 0.002 * seed,
            )
            summary = json.loads((d / "summary.json").read_text())
            summary |= {"params_active_nonembedding": PARAMS[size], "params_nonembedding": PARAMS[size]}
            (d / "summary.json").write_text(json.dumps(summary))
            runs.append({"run_id": rid, "size": size, "arm": arm, "sweep": sweep, "tags": tags or {}})

    # s: both arms swept over lr, the middle one best (bracketed); the baseline's ladder brackets rlrs.
    for arm, gain in (("baseline", 0.0), ("rlrs", -0.2)):
        add("s", arm, gain)
        for f in (0.5, 2.0):
            add("s", arm, gain + 0.05, lr=3e-3 * f, sweep="lr", tags={"lr": 3e-3 * f, "lr_factor": f})
    for steps in (50, 200):
        add("s", "baseline", 0.0, steps=steps, sweep="ladder", tags={"length_factor": steps / 100, "steps": steps})
    # m: the baseline's loss rises with size (check 1); one lr only (check 2); no ladder (check 3).
    add("m", "baseline", 0.1)
    add("m", "rlrs", -0.3)
    # moe-s: a baseline 0.5 nats behind the dense model of its active size (check 6).
    add("moe-s", "baseline", 0.5)
    add("moe-s", "rlrs", 0.3)
    config = {
        "study": STUDY,
        "seeds": [0, 1, 2],
        "health": {"warn_seeds": 3, "min_tokens_per_param": 2.0},
    }
    plan = {
        "study": STUDY,
        "study_file": f"{STUDY}.yaml",
        "study_sha256": "ab" * 32,
        "study_config": config,
        "runs": runs,
    }
    (root / "plan.json").write_text(json.dumps(plan))
    db = root / "rlrs.duckdb"
    dirs = sorted(str(p) for p in (root / "runs").iterdir())
    assert rlrs_main(["collect", "--db", str(db), "--plan", str(root / "plan.json"), *dirs]) == 0
    return db


@pytest.fixture(scope="module")
def health_rows(tmp_path_factory) -> dict:
    con = duckdb.connect(str(build(tmp_path_factory.mktemp("hdb"))), read_only=True)
    cols = "check_name, scope, family, size, arm, status, value, threshold, message"
    rows = con.execute(f"SELECT {cols} FROM health WHERE study = ?", [STUDY]).fetchall()
    names = cols.split(", ")
    return {(r[0], r[3], r[4]): dict(zip(names, r)) for r in rows}


def test_check_1_the_baseline_loss_rising_with_size_fails_the_falling_rlrs_passes(health_rows):
    bad = health_rows[("loss_falls_with_size", "m", "baseline")]
    rise = loss_at(99, 0.1) - loss_at(99, 0.0)  # the per-seed offsets cancel in the means
    assert bad["status"] == "fail" and bad["value"] == pytest.approx(rise, abs=1e-9)
    assert health_rows[("loss_falls_with_size", "m", "rlrs")]["status"] == "pass"


def test_check_2_a_swept_interior_lr_passes_a_single_lr_fails(health_rows):
    ok = health_rows[("lr_bracketed", "s", "rlrs")]
    assert ok["status"] == "pass" and ok["value"] == pytest.approx(3e-3)
    one = health_rows[("lr_bracketed", "m", "rlrs")]
    assert one["status"] == "fail" and "the only lr that ran" in one["message"]


def test_check_3_the_ladder_brackets_rlrs_at_s_and_there_is_none_at_m(health_rows):
    assert health_rows[("ladder_brackets_arm", "s", "rlrs")]["status"] == "pass"
    assert health_rows[("ladder_brackets_arm", "m", "rlrs")]["status"] == "fail"


def test_check_4_tokens_per_parameter_with_the_study_threshold(health_rows):
    s, m = health_rows[("tokens_per_param", "s", None)], health_rows[("tokens_per_param", "m", None)]
    assert s["value"] == pytest.approx(100 * 16 * 128 / 80_000) and s["threshold"] == 2.0 and s["status"] == "pass"
    assert m["value"] == pytest.approx(100 * 16 * 128 / 320_000) and m["status"] == "warn"


def test_check_6_the_handicapped_moe_baseline_fails_and_dropped_tokens_come_from_the_metrics(health_rows):
    moe = health_rows[("moe_vs_dense", "moe-s", "baseline")]
    assert moe["status"] == "fail" and moe["value"] == pytest.approx(0.5, abs=1e-9)
    dropped = health_rows[("dropped_tokens", "moe-s", "rlrs")]
    assert dropped["value"] == pytest.approx(0.05) and dropped["status"] == "pass"  # the fixture drops 5%


def test_check_7_seeds_with_the_study_threshold_and_the_ladder(health_rows):
    assert health_rows[("seeds_per_cell", "s", "rlrs")]["status"] == "pass"  # 3 seeds, warn_seeds 3
    assert health_rows[("ladder_seeds", "s", "baseline")]["status"] == "pass"


def test_check_8_the_lr_chosen_on_the_reported_seeds_fails(health_rows):
    row = health_rows[("seeds_disjoint", None, None)]
    assert row["status"] == "fail" and row["scope"] == "study"
    assert "reported [0, 1, 2], selection [0, 1, 2], tuning []" in row["message"]
