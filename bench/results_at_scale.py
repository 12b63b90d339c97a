"""Results at scale: how collect, query and report grow with the study.

For each N, a synthetic study of N runs is written as real run directories
(config.json, metrics.parquet, summary.json per docs/design.md) plus the
study's plan.json, all made by the real code paths (rlrs.study.make_plan
expands and resolves the study; rlrs.schedule gives the recorded rates;
rlrs.model.param_counts the sizes). Only the numbers are invented: loss
curves a + b * (t + 1)^-c with per-seed noise, RLRS slightly better than the
baseline, so the speedup analysis has real work to do.

The study: K sizes x S seeds x (baseline + RLRS at 2,000 steps, and a
baseline ladder at 1,000, 1,500 and 3,000 steps): N = 5 K S runs of 1,900
steps on average, one metrics row per step.

Then, each as the user runs it (a child process, its own peak memory):
- ingest: `rlrs collect` (one transaction, analysis tables included);
- query: `SELECT * FROM speedup` on a read-only connection (in this process,
  best of several) and `rlrs query` of the same (a child, wall time);
- report: `rlrs report` (page + PNG/SVG figures), and the HTML's size.
Growth: the exponent k in time ~ N^k between consecutive sizes (1 = linear).

Prints one JSON object on its last line. Goals at N = 1,000: ingest < 10 s,
query < 0.5 s, report < 20 s, HTML < 5 MB; growth no worse than linear.
"""

from __future__ import annotations

import argparse
import itertools
import math
import shutil
import tempfile
import time
from functools import cache
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bench.common import RLRS, check, child_env, emit, log, run_measured

MAIN_STEPS = 2000
LADDER = [0.5, 0.75, 1.5]
RUNS_PER_CELL = 2 + len(LADDER)  # baseline, rlrs, ladder
DENSE_RLRS = {  # the paper's dense table (spec section 3)
    "embedding": {"start": 5.0, "end": 0.667},
    "head": {"start": 1.0, "end": 0.444},
    "ffn": {"start": 1.0, "end": 0.667},
    "attention": {"start": 1.0, "end": 0.2},
}
COMPONENTS = ("embedding", "attention", "ffn", "head", "norm")  # a dense model's


def shape(n_runs: int) -> tuple[int, int]:
    """(sizes, seeds) with 5 * sizes * seeds == n_runs, sizes <= 20."""
    cells = n_runs // RUNS_PER_CELL
    if cells * RUNS_PER_CELL != n_runs:
        raise SystemExit(f"--runs values must be multiples of {RUNS_PER_CELL}, got {n_runs}")
    sizes = next(k for k in range(min(20, cells), 0, -1) if cells % k == 0)
    return sizes, cells // sizes


def study(name: str, n_runs: int) -> dict:
    sizes, seeds = shape(n_runs)
    return {
        "study": name,
        "description": f"synthetic results-at-scale study: {n_runs} runs",
        "defaults": {
            "model": {"seq_len": 128},
            "data": {"corpus": "austen", "tokenizer": "bytes", "eval_tokens": 16384},
            "train": {"steps": MAIN_STEPS, "batch_size": 16, "eval_interval": 100},
        },
        "sizes": {f"s{i:02d}": {"d_model": 32 * (i + 1), "n_layers": 2, "n_heads": 4} for i in range(sizes)},
        "arms": {"baseline": {}, "rlrs": {"multipliers": DENSE_RLRS}},
        "seeds": list(range(seeds)),
        "sweeps": {"ladder": {"arm": "baseline", "factors": LADDER}},
    }


@cache
def _rates(schedule_json: str, lr: float, steps: int) -> np.ndarray:
    import json

    from rlrs.schedule import component_table

    return component_table(json.loads(schedule_json), lr, steps, list(COMPONENTS))


@cache
def _counts(model_json: str) -> dict:
    import json

    from rlrs.model import param_counts

    return param_counts(json.loads(model_json))


def write_run(run_dir: Path, cfg: dict, rid: str, rng: np.random.Generator) -> None:
    """One completed run directory with invented but well-formed numbers."""
    import json

    from rlrs.atomic import write, write_json

    steps, every = cfg["train"]["steps"], cfg["train"]["eval_interval"]
    size = int(cfg["meta"]["size"][1:])
    rlrs_arm = cfg["meta"]["arm"] == "rlrs"
    t = np.arange(steps)
    floor = 1.6 - 0.05 * size - (0.04 if rlrs_arm else 0.0) + rng.normal(0, 0.005)
    curve = floor + 3.5 * (t + 1.0) ** -0.35
    train_loss = curve + rng.normal(0, 0.02, steps)
    is_eval = ((t + 1) % every == 0) | (t == steps - 1)
    eval_loss = np.where(is_eval, curve, np.nan)
    cols = {
        "step": pa.array(t, pa.int64()),
        "tokens": pa.array((t + 1) * cfg["train"]["batch_size"] * cfg["model"]["seq_len"], pa.int64()),
        "train_loss": train_loss,
        "lb_loss": pa.nulls(steps, pa.float64()),
        "z_loss": pa.nulls(steps, pa.float64()),
        "dropped_frac": pa.nulls(steps, pa.float64()),
        "grad_norm": 0.5 + rng.random(steps),
        "eval_loss": pa.array(eval_loss, pa.float64(), mask=~is_eval),
    }
    rates = _rates(json.dumps(cfg["schedule"], sort_keys=True), cfg["optim"]["lr"], steps)
    for j, c in enumerate(COMPONENTS):
        cols[f"lr_{c}"] = rates[:, j]
    for j, c in enumerate(COMPONENTS):
        cols[f"update_{c}"] = rates[:, j] * (0.5 + 0.1 * rng.random(steps))
    run_dir.mkdir(parents=True)
    write_json(run_dir / "config.json", {**cfg, "run_id": rid})
    table = pa.table(cols)
    write(run_dir / "metrics.parquet", lambda p: pq.write_table(table, p))
    final = float(curve[-1])
    write_json(
        run_dir / "summary.json",
        {
            "run_id": rid,
            "status": "completed",
            "final_eval_loss": final,
            "final_eval_bpb": final / math.log(2),
            "train_loss_last100": float(train_loss[-100:].mean()),
            "steps_done": steps,
            "tokens": steps * cfg["train"]["batch_size"] * cfg["model"]["seq_len"],
            **_counts(json.dumps(cfg["model"], sort_keys=True)),
            "wall_time_s": steps * 0.05,
            "step_time_s": 0.05,
            "started_at": "2026-01-01T00:00:00+00:00",
            "finished_at": "2026-01-01T00:02:00+00:00",
            "host": "bench",
            "job_id": None,
            "executor": "local",
            "versions": {"python": "3.11", "torch": "2.13.0", "rlrs": "0", "numpy": np.__version__},
            "git_commit": None,
            "corpus": "austen/bytes",
            "error": None,
        },
    )


def make_study(root: Path, name: str, n_runs: int) -> tuple[Path, Path, int]:
    """Write the study's run directories and plan.json; returns (runs dir,
    plan, metrics rows in all)."""
    from rlrs.study import make_plan, write_plan

    plan = make_plan(study(name, n_runs))
    if len(plan.configs) != n_runs:
        raise SystemExit(f"the synthetic study expanded to {len(plan.configs)} runs, not {n_runs}")
    runs = root / "runs"
    rng = np.random.default_rng(0)
    for rid, cfg in plan.configs.items():
        write_run(runs / rid, cfg, rid, rng)
    plan_path = root / "plan.json"
    write_plan(plan, plan_path)
    return runs, plan_path, sum(cfg["train"]["steps"] for cfg in plan.configs.values())


def query_seconds(db: Path, sql: str, repeats: int = 5) -> tuple[float, int]:
    """Best wall time of one read-only query (connect included), and its rows."""
    import duckdb

    best, rows = math.inf, 0
    for _ in range(repeats):
        t0 = time.perf_counter()
        con = duckdb.connect(str(db), read_only=True)
        rows = con.sql(sql).pl().height
        con.close()
        best = min(best, time.perf_counter() - t0)
    return best, rows


def measure(n_runs: int, keep: Path | None) -> dict:
    name = f"scale{n_runs}"
    tmp = Path(tempfile.mkdtemp(prefix=f"rlrs-scale{n_runs}-"))
    try:
        t0 = time.perf_counter()
        runs, plan, rows = make_study(tmp, name, n_runs)
        gen_s = time.perf_counter() - t0
        disk_mb = sum(f.stat().st_size for f in runs.rglob("*") if f.is_file()) / 1e6
        log(f"N={n_runs}: wrote {n_runs} run directories ({disk_mb:.0f} MB) in {gen_s:.1f} s")
        env = child_env()
        db = tmp / "rlrs.duckdb"
        collect = check(
            run_measured(
                [*RLRS, "collect", "--db", str(db), "--study", name, "--plan", str(plan), "--runs-root", str(runs)],
                env=env,
            ),
            "rlrs collect",
        )
        log(f"N={n_runs}: collect {collect.wall_s:.2f} s, {collect.maxrss_mb:.0f} MB; {collect.stdout.strip()}")
        q_s, q_rows = query_seconds(db, "SELECT * FROM speedup")
        q_cli = check(run_measured([*RLRS, "query", "SELECT * FROM speedup", "--db", str(db)], env=env), "rlrs query")
        html = tmp / "report" / "index.html"
        report = check(
            run_measured([*RLRS, "report", name, "--db", str(db), "--out", str(html)], env=env), "rlrs report"
        )
        log(
            f"N={n_runs}: report {report.wall_s:.2f} s, {report.maxrss_mb:.0f} MB; {report.stdout.strip().splitlines()[0]}"
        )
        result = {
            "runs": n_runs,
            "metric_rows": rows,
            "disk_mb": round(disk_mb, 1),
            "db_mb": round(db.stat().st_size / 1e6, 1),
            "ingest_s": round(collect.wall_s, 3),
            "ingest_maxrss_mb": round(collect.maxrss_mb, 1),
            "speedup_query_s": round(q_s, 4),
            "speedup_rows": q_rows,
            "query_cli_s": round(q_cli.wall_s, 3),
            "report_s": round(report.wall_s, 3),
            "report_maxrss_mb": round(report.maxrss_mb, 1),
            "html_mb": round(html.stat().st_size / 1e6, 3),
        }
        if keep is not None:
            shutil.copytree(tmp / "report", keep / name, dirs_exist_ok=True)
        return result
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def growth(results: list[dict], key: str) -> list[float]:
    """Exponent k of key ~ N^k between consecutive study sizes."""
    return [
        round(math.log(b[key] / a[key]) / math.log(b["runs"] / a["runs"]), 2)
        for a, b in itertools.pairwise(results)
        if a[key] > 0 and b[key] > 0
    ]


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, nargs="+", default=[100, 1000], help="study sizes N (multiples of 5)")
    p.add_argument("--keep-reports", type=Path, default=None, help="copy each report here")
    p.add_argument("--quick", action="store_true", help="smoke pass: N = 10")
    a = p.parse_args(argv)
    if a.quick:
        a.runs = [10]
    results = [measure(n, a.keep_reports) for n in sorted(a.runs)]
    at = {r["runs"]: r for r in results}
    ref = at.get(1000, results[-1])
    return emit(
        "results_at_scale",
        "at N=1000: ingest < 10 s, query < 0.5 s, report < 20 s, HTML < 5 MB; growth <= linear",
        {
            f"ingest_s_at_{ref['runs']}": ref["ingest_s"],
            f"query_s_at_{ref['runs']}": ref["speedup_query_s"],
            f"report_s_at_{ref['runs']}": ref["report_s"],
            f"html_mb_at_{ref['runs']}": ref["html_mb"],
        },
        growth={
            k: growth(results, k)
            for k in ("ingest_s", "speedup_query_s", "report_s", "html_mb", "ingest_maxrss_mb", "report_maxrss_mb")
        },
        results=results,
    )


if __name__ == "__main__":
    main()
