"""Pipeline overhead: what the workflow costs per run on top of training.

A study of N short runs (a tiny dense model, one seed each) goes through the
real workflow, `snakemake -cC --until train` (Snakefile -> `rlrs submit` ->
submitit local executor -> rlrs.train), into a temporary results folder.
Then

    overhead_per_run_s = (snakemake wall - sum of the runs' wall_time_s) / N

(summary.json `wall_time_s` is the run's own training loop, from the
trainer's start to its summary). With C > 1 cores the runs overlap, so the
figure is also given in core-seconds: (C * wall - sum) / N.

What the overhead is made of, measured separately in the same benchmark:
- `fixed_s`: a dry run of the same study (`snakemake -n`): parsing the
  Snakefile, expanding and validating the study; paid once per call;
- `plan_job_s`: the `plan` rule's job (writing plan.json), from
  `--until plan` minus the dry run: a `run:` rule, which Snakemake executes
  in a new Snakemake process that parses the workflow again;
- `rlrs_train_s`: `rlrs train` of one such run as a plain process, minus its
  wall_time_s: Python start, importing torch and rlrs, corpus and model
  set-up: paid by every run whatever launches it;
- `torch_import_s`: `python -c "import torch"`;
- `dynamo_import_s`: importing torch._dynamo after torch, which the first
  torch.optim optimizer built in a process triggers (its methods are
  wrapped in torch._disable_dynamo, which imports dynamo on first call);
- `submitit_job_s`: one no-op job through submitit's local executor, from
  submit to result (its controller and job are two fresh Python processes);
- `submit_noop_s`: `rlrs submit` of a run that is already complete (process
  start, plan read, no job): the per-job cost of the submit command itself;
- `snakemake_trivial_job_s`: Snakemake's own cost per job, from a workflow
  of N `touch` jobs (minus its dry run).
And what grouping runs would save: `grouped_overhead_per_run_s`, the same N
runs trained one after another in ONE Python process (rlrs.train.train in a
loop): what is left when process start and imports are paid once.
Each part is one sample in a process of its own, so the parts need not add
up exactly to the per-run figure.

Then the same study with `executor.runs_per_job` R (`--runs-per-job`,
default 6): the workflow submits batches of R runs, each one job that trains
its runs one after another in one process (`rule train_batch`):
`batched_overhead_per_run_s` is the same formula for it, measured side by
side in this process. `--executor slurm` runs both studies through a real
Slurm (`scripts/slurm-single-node.sh up` here) instead of local processes.

Prints one JSON object on its last line; goal: overhead_per_run_s < 1 (met
by the batched figure: batching is how a grid of short runs should be run).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import yaml

from bench.common import REPO, RLRS, SNAKEMAKE, check, child_env, emit, log, run_measured

STUDY = "pipebench"


def study(n_runs: int, steps: int, executor: str = "local", runs_per_job: int = 1) -> dict:
    """N runs that differ only by seed: the shortest real runs the workflow takes."""
    return {
        "study": STUDY,
        "description": "pipeline-overhead benchmark: many tiny runs",
        "executor": {
            "kind": executor,
            "timeout_min": 10,
            "runs_per_job": runs_per_job,
            **(
                {"slurm": {"partition": os.environ.get("RLRS_SLURM_PARTITION", "debug"), "cpus_per_task": 1}}
                if executor == "slurm"
                else {}
            ),
        },
        "defaults": {
            "model": {"seq_len": 32},
            "data": {"corpus": "austen", "tokenizer": "bytes", "eval_tokens": 1024},
            "train": {
                "steps": steps,
                "batch_size": 8,
                "eval_interval": steps,
                "checkpoint_interval": steps,
                "log_interval": steps,
                "threads": 1,
            },
        },
        "sizes": {"tiny": {"d_model": 16, "n_layers": 1, "n_heads": 2}},
        "arms": {"baseline": {}},
        "seeds": list(range(n_runs)),
    }


def snakemake(workdir: Path, study_file: Path, env: dict, *extra: str, until: str = "train"):
    cmd = [
        *SNAKEMAKE,
        "-s",
        str(REPO / "Snakefile"),
        "-d",
        str(workdir),
        "--configfile",
        str(study_file),
        "--until",
        until,
        *extra,
    ]
    return run_measured(cmd, env=env, cwd=workdir)


# Trains every run of a plan in this one process (argv: plan.json, out root).
GROUPED = """
import json, sys
from pathlib import Path
from rlrs.train import train
plan, root = json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2])
for rid, cfg in plan["configs"].items():
    assert train(cfg, root / rid)["status"] == "completed"
"""


TRIVIAL_SNAKEFILE = """
rule all:
    input: expand("out/{i}.txt", i=range(int(config["count"])))

rule one:
    output: "out/{i}.txt"
    shell: "touch {output}"
"""


def _snakemake_trivial(workdir: Path, n: int, env: dict) -> float:
    """Snakemake's own cost per job: N `touch` jobs, minus a dry run of them."""
    workdir.mkdir()
    (workdir / "Snakefile").write_text(TRIVIAL_SNAKEFILE)
    args = ["-c1", "--config", f"count={n}"]
    dry = check(run_measured([*SNAKEMAKE, "-n", *args], env=env, cwd=workdir), "trivial snakemake dry run")
    full = check(run_measured([*SNAKEMAKE, *args], env=env, cwd=workdir), "trivial snakemake")
    return (full.wall_s - dry.wall_s) / n


def trained_seconds(summaries: list[Path], expected: int) -> float:
    """The sum of the runs' own training time (summary.json wall_time_s)."""
    if len(summaries) != expected:
        raise SystemExit(f"expected {expected} finished runs, found {len(summaries)}")
    return sum(json.loads(s.read_text())["wall_time_s"] for s in summaries)


def _timed_in_child(setup: str, timed: str, env: dict) -> float:
    """Seconds `timed` takes in a fresh Python process after `setup` ran."""
    code = f"import time\n{setup}\nt0 = time.perf_counter()\n{timed}\nprint(time.perf_counter() - t0)"
    out = check(run_measured([sys.executable, "-c", code], env=env), f"python -c {timed!r}")
    return float(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=12, help="runs in the study")
    p.add_argument("--steps", type=int, default=10, help="training steps per run")
    p.add_argument("--cores", type=int, default=1, help="snakemake -c (1: runs one after another)")
    p.add_argument("--runs-per-job", type=int, default=6, help="executor.runs_per_job of the batched study")
    p.add_argument(
        "--executor",
        choices=["local", "slurm"],
        default="local",
        help="the studies' executor (slurm: a running Slurm with srun on PATH, e.g. scripts/slurm-single-node.sh up)",
    )
    p.add_argument("--quick", action="store_true", help="smoke pass: 2 runs of 2 steps")
    a = p.parse_args(argv)
    if a.quick:
        a.runs, a.steps, a.runs_per_job = 2, 2, 2
    with tempfile.TemporaryDirectory(prefix="rlrs-pipebench-") as tmp:
        tmp = Path(tmp)
        env = child_env(RLRS_RESULTS=str(tmp / "results"), RLRS_REPORTS=str(tmp / "reports"))
        study_file = tmp / f"{STUDY}.yaml"
        study_file.write_text(yaml.safe_dump(study(a.runs, a.steps, a.executor)))

        dry = check(snakemake(tmp, study_file, env, "-n", "-c1"), "snakemake dry run")
        log(f"dry run: {dry.wall_s:.2f} s")
        # The plan rule alone, into a results folder of its own.
        plan_only = check(
            snakemake(tmp, study_file, {**env, "RLRS_RESULTS": str(tmp / "plan-only")}, "-c1", until="plan"),
            "snakemake --until plan",
        )
        full = check(snakemake(tmp, study_file, env, f"-c{a.cores}"), "snakemake study")
        runs = sorted((tmp / "results" / STUDY / "runs").glob("*/summary.json"))
        train_s = trained_seconds(runs, a.runs)
        log(f"study: {full.wall_s:.2f} s wall for {a.runs} runs, {train_s:.2f} s training in all")
        # The same study with executor.runs_per_job: batches of runs, one job
        # (one process, one torch import) each, into a results folder of its own.
        batched_file = tmp / "batched" / f"{STUDY}.yaml"
        batched_file.parent.mkdir()
        batched_file.write_text(yaml.safe_dump(study(a.runs, a.steps, a.executor, a.runs_per_job)))
        batched_env = {**env, "RLRS_RESULTS": str(tmp / "batched" / "results")}
        batched = check(
            snakemake(tmp / "batched", batched_file, batched_env, f"-c{a.cores}", until="train_batch"),
            "snakemake study, batched",
        )
        batched_train_s = trained_seconds(
            sorted((tmp / "batched" / "results" / STUDY / "runs").glob("*/summary.json")), a.runs
        )
        log(
            f"batched study ({a.runs_per_job} runs per job): {batched.wall_s:.2f} s wall, {batched_train_s:.2f} s training"
        )

        # One run trained by a plain `rlrs train` process, outside the workflow.
        plan = json.loads((tmp / "results" / STUDY / "plan.json").read_text())
        # YAML, not JSON: rlrs.config.load reads JSON through PyYAML, which
        # takes 1e-08 (no dot) for a string (reported to config.py's owner).
        config_file = tmp / "one.yaml"
        config_file.write_text(yaml.safe_dump(next(iter(plan["configs"].values()))))
        direct = check(
            run_measured([*RLRS, "train", str(config_file), "--out", str(tmp / "direct")], env=env), "rlrs train"
        )
        direct_train = json.loads((tmp / "direct" / "summary.json").read_text())["wall_time_s"]
        torch_import = check(run_measured([sys.executable, "-c", "import torch"], env=env), "import torch")
        # What grouping would save: the same runs trained one after another
        # in ONE process (torch, dynamo and rlrs imported once).
        grouped = check(
            run_measured(
                [sys.executable, "-c", GROUPED, str(tmp / "results" / STUDY / "plan.json"), str(tmp / "grouped")],
                env=env,
            ),
            "grouped training",
        )
        grouped_train = sum(json.loads(s.read_text())["wall_time_s"] for s in (tmp / "grouped").glob("*/summary.json"))
        dynamo = _timed_in_child("import torch", "import torch._dynamo", env)
        submitit_job = _timed_in_child(
            f"import submitit; ex = submitit.LocalExecutor(folder={str(tmp / 'noop')!r}); ex.update_parameters(timeout_min=1)",
            # polled the way rlrs.launch polls local jobs (submitit's own wait sleeps 1 s)
            "job = ex.submit(int, 7)\nwhile not job.done(): time.sleep(0.05)\nassert job.result() == 7",
            env,
        )
        trivial = _snakemake_trivial(tmp / "trivial", a.runs, env)
        noop = check(
            run_measured(
                [*RLRS, "submit", str(runs[0].parent), "--plan", str(tmp / "results" / STUDY / "plan.json")], env=env
            ),
            "rlrs submit (no-op)",
        )

    per_run = (full.wall_s - train_s) / a.runs
    figures = {
        "overhead_per_run_s": round(per_run, 3),
        "overhead_core_s_per_run": round((a.cores * full.wall_s - train_s) / a.runs, 3),
        # without the once-per-call parse and plan job (the `--until plan` wall)
        "marginal_overhead_per_run_s": round((full.wall_s - plan_only.wall_s - train_s) / a.runs, 3),
        # the same runs in one process, no workflow: the floor grouping could reach
        "grouped_overhead_per_run_s": round((grouped.wall_s - grouped_train) / a.runs, 3),
        # the same study with executor.runs_per_job (batched submission)
        "batched_overhead_per_run_s": round((batched.wall_s - batched_train_s) / a.runs, 3),
        "batched_overhead_core_s_per_run": round((a.cores * batched.wall_s - batched_train_s) / a.runs, 3),
    }
    parts = {
        "fixed_s": round(dry.wall_s, 3),
        "plan_job_s": round(plan_only.wall_s - dry.wall_s, 3),
        "rlrs_train_s": round(direct.wall_s - direct_train, 3),
        "torch_import_s": round(torch_import.wall_s, 3),
        "dynamo_import_s": round(dynamo, 3),
        "submitit_job_s": round(submitit_job, 3),
        "submit_noop_s": round(noop.wall_s, 3),
        "snakemake_trivial_job_s": round(trivial, 3),
    }
    return emit(
        "pipeline_overhead",
        "overhead_per_run_s < 1",
        figures,
        parts=parts,
        runs=a.runs,
        steps=a.steps,
        cores=a.cores,
        executor=a.executor,
        runs_per_job=a.runs_per_job,
        wall_s=round(full.wall_s, 3),
        train_s_sum=round(train_s, 3),
        batched_wall_s=round(batched.wall_s, 3),
        batched_train_s_sum=round(batched_train_s, 3),
    )


if __name__ == "__main__":
    main()
