"""The committed studies as a user gets them from a clone: `rlrs collect`
rebuilds each one's database from its committed run directories alone; the
rebuilt database says what the README reads from it (no health check fails
in study-cpu; scaling-cpu's fits each have a held-out RMSE and use the
budgets from 2000 steps up, and each family has a compute multiplier with an
interval at every budget within the fits' compute); the runs scaling-cpu
copied from study-cpu are committed as links to the identical files; and
every committed report renders offline in headless Chromium. Real data,
~3 min."""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest
from test_report import headless, rendered_status

REPO = Path(__file__).resolve().parent.parent
RESULTS, REPORTS = REPO / "results", REPO / "reports"


def finished_runs(study: str) -> list[Path]:
    return sorted(p for p in (RESULTS / study / "runs").iterdir() if (p / "summary.json").exists())


def collect(study: str, db: Path) -> str:
    runs = [str(p) for p in finished_runs(study)]
    cmd = [sys.executable, "-m", "rlrs", "collect", "--db", str(db), "--study", study]
    out = subprocess.run(
        [*cmd, "--plan", str(RESULTS / study / "plan.json"), *runs], capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr
    assert f"{len(runs)} run(s) written" in out.stdout
    return out.stdout


@pytest.fixture(scope="module")
def study_cpu(tmp_path_factory) -> duckdb.DuckDBPyConnection:
    db = tmp_path_factory.mktemp("study-cpu") / "rlrs.duckdb"
    collect("study-cpu", db)
    return duckdb.connect(str(db), read_only=True)


@pytest.fixture(scope="module")
def scaling_cpu(tmp_path_factory) -> duckdb.DuckDBPyConnection:
    db = tmp_path_factory.mktemp("scaling-cpu") / "rlrs.duckdb"
    collect("scaling-cpu", db)
    return duckdb.connect(str(db), read_only=True)


def test_study_cpu_rebuilds_with_no_failing_health_check(study_cpu):
    statuses = dict(study_cpu.execute("SELECT status, count(*) FROM health GROUP BY status").fetchall())
    assert statuses.get("pass", 0) > 0 and statuses.get("fail", 0) == 0, statuses
    # Every size has its speedup as a number with an interval (the ladder brackets the RLRS loss), not a bound.
    rows = study_cpu.execute(
        "SELECT size, speedup, ci_low, ci_high, bound FROM speedup WHERE definition = 'ladder' AND arm = 'rlrs'"
    ).fetchall()
    assert {r[0] for r in rows} == {f"{f}-{s}" for f in ("dense", "moe") for s in "sml"}
    for size, speedup, low, high, bound in rows:
        assert bound is None and low <= speedup <= high, size


def test_reused_runs_are_committed_as_links_to_the_identical_file_they_copied():
    runs = finished_runs("scaling-cpu")
    reused = [d for d in runs if (d / "reused.json").exists()]
    trained = [d for d in runs if not (d / "reused.json").exists()]
    assert reused and trained
    for d in trained:
        assert not (d / "metrics.parquet").is_symlink(), d.name
    for d in reused:
        doc = json.loads((d / "reused.json").read_text())
        metrics = d / "metrics.parquet"
        assert metrics.is_symlink(), d.name
        source = RESULTS / doc["from_run_dir"] / "metrics.parquet"
        assert metrics.resolve() == source.resolve() and source.is_relative_to(RESULTS), d.name
        assert hashlib.sha256(source.read_bytes()).hexdigest() == doc["sha256"]["metrics.parquet"], d.name


def test_scaling_cpu_rebuilds_its_fits_and_multipliers(scaling_cpu):
    fits = scaling_cpu.execute(
        "SELECT DISTINCT family, arm, rmse_train, rmse_heldout, n_points, n_heldout FROM scaling_fit "
        "WHERE law = 'chinchilla'"
    ).fetchall()
    assert {(f, a) for f, a, *_ in fits} == {(f, a) for f in ("dense", "moe") for a in ("baseline", "rlrs")}
    for family, arm, train, heldout, n, n_heldout in fits:
        assert math.isfinite(train) and math.isfinite(heldout) and n_heldout == 2 and n + n_heldout >= 12, (family, arm)
    # The fits' regime (scaling.tokens.min): the 1000-step runs are in the study, not in any fit.
    budgets = scaling_cpu.execute("SELECT DISTINCT tokens FROM scaling_points ORDER BY tokens").fetchall()
    assert [b for (b,) in budgets] == [4096000, 8192000, 16384000]
    assert scaling_cpu.execute("SELECT count(*) FROM runs WHERE steps = 1000 AND sweep = 'scaling'").fetchone()[0] > 0
    rows = scaling_cpu.execute(
        "SELECT family, multiplier, ci_low, ci_high, extrapolated FROM compute_multiplier "
        "WHERE law = 'chinchilla' AND arm = 'rlrs'"
    ).fetchall()
    for family in ("dense", "moe"):
        mine = [r for r in rows if r[0] == family]
        assert any(not r[4] for r in mine) and any(r[4] for r in mine), family
        for _, m, low, high, extrapolated in mine:  # an interval at every budget within the fits' compute
            assert m >= 0 and (extrapolated or (low is not None and high is not None)), family
            assert low is None or high is None or low <= high, family


@pytest.mark.parametrize("study", ["study-cpu", "scaling-cpu", "mup-cpu", "study-cpu-v1"])
def test_the_committed_report_renders_offline(study, tmp_path):
    page = REPORTS / study / "index.html"
    status = rendered_status(headless(page, tmp_path / "profile", "--dump-dom").stdout)
    assert status["done"] == "yes" and status["errors"] == "0", status["text"]
    assert int(status["charts"]) > 0 and status["rendered"] == status["charts"], status
