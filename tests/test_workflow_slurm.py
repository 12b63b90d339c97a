"""The smoke study through a real single-node Slurm.

The same Snakefile and study as the local smoke test (tests/test_workflow.py),
with only the study's executor block switched to Slurm: every training run
becomes a Slurm job submitted by `rlrs submit` through submitit's
SlurmExecutor, and its Slurm job id travels into summary.json and the DuckDB
`runs` table, where it must match what Slurm's own accounting (`sacct`) knows.
"""

from __future__ import annotations

import json

import duckdb
import pytest
import yaml

pytest.register_assert_rewrite("_slurm_fixtures")  # before its import: its asserts report values
from test_workflow import CONFIGS, snakemake  # noqa: E402

from _slurm_fixtures import sacct_records  # noqa: E402

pytest_plugins = ["_slurm_fixtures"]  # the `slurm_cluster` fixture, one per session
pytestmark = [pytest.mark.slurm, pytest.mark.slow]

STUDY = "smoke-slurm"


def test_smoke_study_runs_through_slurm(slurm_cluster, tmp_path):
    study = yaml.safe_load((CONFIGS / "smoke.yaml").read_text())
    study["study"] = STUDY
    study["executor"] = {
        "kind": "slurm",
        "timeout_min": 5,
        # One CPU per run: the node's two CPUs take Snakemake's two parallel jobs.
        "slurm": {"partition": slurm_cluster.partition, "cpus_per_task": 1},
    }
    study_file = tmp_path / f"{STUDY}.yaml"
    study_file.write_text(yaml.safe_dump(study))

    # Up to the DuckDB file: the report is the local smoke test's business.
    # (The target comes first: --configfile takes every argument after it.)
    run = snakemake(tmp_path, f"results/{STUDY}/rlrs.duckdb", "-c2", "--configfile", str(study_file))
    assert run.returncode == 0, run.stderr[-3000:]

    results = tmp_path / "results" / STUDY
    planned = sorted({r["run_id"] for r in json.loads((results / "plan.json").read_text())["runs"]})
    assert (
        len(planned) == 16
    )  # the staged smoke study: 7 stage-1 runs + 9 measurement runs (workflow/configs/README.md)
    summaries = {rid: json.loads((results / "runs" / rid / "summary.json").read_text()) for rid in planned}
    for rid, summary in summaries.items():
        assert (summary["status"], summary["executor"]) == ("completed", "slurm"), rid
        assert str(summary["job_id"]).isdigit(), summary["job_id"]
    job_ids = {rid: str(s["job_id"]) for rid, s in summaries.items()}
    assert len(set(job_ids.values())) == len(planned), "each run is its own Slurm job"

    con = duckdb.connect(str(results / "rlrs.duckdb"), read_only=True)
    try:
        rows = con.execute("SELECT run_id, executor, job_id FROM runs ORDER BY run_id").fetchall()
    finally:
        con.close()
    assert rows == [(rid, "slurm", job_ids[rid]) for rid in planned]

    # Slurm's accounting knows exactly these jobs, finished, on our partition.
    records = sacct_records(sorted(job_ids.values()))
    assert sorted((r["JobID"], r["State"], r["Partition"]) for r in records) == sorted(
        (jid, "COMPLETED", slurm_cluster.partition) for jid in job_ids.values()
    )
