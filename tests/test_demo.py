"""The README's demo, for real, the way a user runs it: `make demo` in a copy
of the checkout, with a PATH that holds no rlrs and no snakemake (its setup
step is skipped, `-o setup`: `make test` has just run the same script). It
trains the demo study, the DuckDB holds one row per planned run, the query
command `make demo` prints at its end works as printed, and the report renders
in headless Chromium with the network closed (a screenshot goes to
test-artifacts/)."""

from __future__ import annotations

import shlex
import shutil
import subprocess

import duckdb
import pytest
from test_report import ARTIFACTS, headless, rendered_status
from test_workflow import BIN, CONFIGS, REPO, user_env

from rlrs.study import load_study, tuned_plan

pytestmark = [pytest.mark.slow, pytest.mark.browser]

# What a clean clone holds (outputs, caches and the venv left out; the venv is linked in).
NOT_IN_A_CLONE = (
    ".git",
    ".venv",
    "results",
    "reports",
    ".snakemake",
    "test-artifacts",
    "__pycache__",
    ".pytest_cache",
    "*.egg-info",
)


def test_make_demo_end_to_end_and_its_report_renders(tmp_path, monkeypatch):
    clone = tmp_path / "rlrs"
    shutil.copytree(REPO, clone, ignore=shutil.ignore_patterns(*NOT_IN_A_CLONE))
    (clone / ".venv").symlink_to(BIN.parent)

    make = subprocess.run(
        ["make", "-o", "setup", "demo"], cwd=clone, env=user_env(), capture_output=True, text=True, timeout=1200
    )
    assert make.returncode == 0, make.stdout[-3000:] + make.stderr[-3000:]
    results = clone / "results" / "demo"
    # The demo is staged: its plan is known once stage 1 has chosen the lrs (results/demo/select/).
    monkeypatch.setenv("RLRS_RESULTS", str(clone / "results"))
    planned = set(tuned_plan(load_study(CONFIGS / "demo.yaml")).run_ids)
    con = duckdb.connect(str(results / "rlrs.duckdb"), read_only=True)
    try:
        ids = {r[0] for r in con.execute("SELECT run_id FROM runs WHERE status = 'completed'").fetchall()}
        assert ids == planned
        assert con.execute("SELECT count(*) FROM lr_selection WHERE chosen_lr IS NOT NULL").fetchall() == [(8,)]
        families = {r[0] for r in con.execute("SELECT DISTINCT moe FROM runs").fetchall()}
        assert families == {True, False}  # dense and MoE
        speedups = con.execute("SELECT size, arm, definition FROM speedup").fetchall()
        assert (
            con.execute("SELECT count(*) FROM speedup WHERE speedup IS NOT NULL OR bound IS NOT NULL").fetchall()[0][0]
            > 0
        )
    finally:
        con.close()

    # It ends by saying where the report and the database are, and how to query them.
    printed = make.stdout.splitlines()
    end = printed.index("query it:")
    report_line, db_line, query = printed[end - 2], printed[end - 1], printed[end + 1]
    assert printed[end + 2 :] == []
    assert report_line == "demo: the report   reports/demo/index.html (open it in a browser; it works offline)"
    assert db_line.startswith("demo: the database results/demo/rlrs.duckdb ")
    out = subprocess.run(shlex.split(query), cwd=clone, env=user_env(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    body = out.stdout.splitlines()[5:-1]  # the table without its header and its bottom line
    rows = [tuple(cell.strip() for cell in line.strip("│").split("┆"))[:3] for line in body]
    assert sorted(rows) == sorted(speedups)

    page = clone / "reports" / "demo" / "index.html"
    browser = headless(page, tmp_path / "profile", "--dump-dom")
    status = rendered_status(browser.stdout)
    assert status["done"] == "yes", browser.stderr[-2000:]
    assert int(status["charts"]) >= 4
    assert status["rendered"] == status["charts"] and status["errors"] == "0", status["text"]
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "demo-report.png"
    headless(page, tmp_path / "profile2", "--window-size=1280,5200", f"--screenshot={shot}")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
