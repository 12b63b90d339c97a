"""Demo end to end: wall time of `snakemake -c2` on the demo study
(workflow/configs/demo.yaml), from nothing to reports/demo/index.html, into
a temporary results folder (RLRS_RESULTS / RLRS_REPORTS), the way a user's
first `make demo` runs (the corpus already fetched).

Also reported: the runs trained, their summed training time (summary.json
`wall_time_s`) and the report's size, so the wall time can be split into
training and everything else.

Prints one JSON object on its last line; goal: wall_s < 300.
`--quick` runs the seconds-long smoke study instead.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from bench.common import REPO, SNAKEMAKE, check, child_env, emit, log, run_measured

DEMO = REPO / "workflow" / "configs" / "demo.yaml"
SMOKE = REPO / "workflow" / "configs" / "smoke.yaml"


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--study", type=Path, default=DEMO)
    p.add_argument("--cores", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="smoke pass: the smoke study")
    a = p.parse_args(argv)
    if a.quick:
        a.study = SMOKE
    with tempfile.TemporaryDirectory(prefix="rlrs-demo-") as tmp:
        tmp = Path(tmp)
        env = child_env(RLRS_RESULTS=str(tmp / "results"), RLRS_REPORTS=str(tmp / "reports"))
        cmd = [
            *SNAKEMAKE,
            f"-c{a.cores}",
            "-s",
            str(REPO / "Snakefile"),
            "-d",
            str(tmp),
            "--configfile",
            str(a.study.resolve()),
        ]
        log("running:", " ".join(cmd))
        run = check(run_measured(cmd, env=env, cwd=tmp), "snakemake")
        summaries = [json.loads(s.read_text()) for s in (tmp / "results").glob("*/runs/*/summary.json")]
        reports = list((tmp / "reports").glob("*/index.html"))
        if not reports:
            raise SystemExit(f"snakemake succeeded but wrote no report under {tmp / 'reports'}")
        train_s = sum(s["wall_time_s"] for s in summaries)
        log(f"{len(summaries)} runs, {train_s:.1f} s of training, {run.wall_s:.1f} s wall")
        return emit(
            "demo_e2e",
            "wall_s < 300",
            {"wall_s": round(run.wall_s, 2)},
            study=str(a.study.relative_to(REPO) if a.study.is_relative_to(REPO) else a.study),
            cores=a.cores,
            runs=len(summaries),
            completed=sum(s["status"] == "completed" for s in summaries),
            train_s_sum=round(train_s, 2),
            train_share_of_core_time=round(train_s / (a.cores * run.wall_s), 3),
            report_mb=round(reports[0].stat().st_size / 1e6, 3),
            snakemake_maxrss_mb=round(run.maxrss_mb, 1),
        )


if __name__ == "__main__":
    main()
