"""The README's demo, for real: a bare `snakemake -c2` trains the demo study,
the DuckDB holds one row per planned run, and the report renders in headless
Chromium with the network closed (a screenshot goes to test-artifacts/)."""

from __future__ import annotations

import json

import duckdb
import pytest
from test_report import ARTIFACTS, headless, rendered_status
from test_workflow import job_counts, snakemake

pytestmark = [pytest.mark.slow, pytest.mark.browser]


def test_demo_study_end_to_end_and_its_report_renders(tmp_path):
    dry = snakemake(tmp_path, "-n")  # a bare call: the default study is demo
    assert dry.returncode == 0, dry.stderr[-3000:]
    planned_jobs = job_counts(dry.stdout)["train"]

    run = snakemake(tmp_path, "-c2", timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    results = tmp_path / "results" / "demo"
    planned = {r["run_id"] for r in json.loads((results / "plan.json").read_text())["runs"]}
    assert len(planned) == planned_jobs
    con = duckdb.connect(str(results / "rlrs.duckdb"), read_only=True)
    try:
        ids = {r[0] for r in con.execute("SELECT run_id FROM runs WHERE status = 'completed'").fetchall()}
        assert ids == planned
        families = {r[0] for r in con.execute("SELECT DISTINCT moe FROM runs").fetchall()}
        assert families == {True, False}  # dense and MoE
        speedups = con.execute("SELECT count(*) FROM speedup WHERE speedup IS NOT NULL OR bound IS NOT NULL").fetchall()
        assert speedups[0][0] > 0
    finally:
        con.close()

    page = tmp_path / "reports" / "demo" / "index.html"
    browser = headless(page, tmp_path / "profile", "--dump-dom")
    status = rendered_status(browser.stdout)
    assert status["done"] == "yes", browser.stderr[-2000:]
    assert int(status["charts"]) >= 4
    assert status["rendered"] == status["charts"] and status["errors"] == "0", status["text"]
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "demo-report.png"
    headless(page, tmp_path / "profile2", "--window-size=1280,5200", f"--screenshot={shot}")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
