"""The `rlrs` command. Parsing only: every subcommand calls one function of the
module that owns the work. Modules are imported lazily so that light commands
(`query`, `status`, `plan`) do not pay for importing torch."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _train(sub):
    p = sub.add_parser("train", help="train (or resume, or skip) one run")
    p.add_argument("config", type=Path, help="run config YAML or JSON")
    p.add_argument("--out", type=Path, required=True, help="run directory")
    p.add_argument("--threads", type=int, default=None, help="override train.threads")

    def run(a):
        from rlrs.train import cli_train

        return cli_train(a.config, a.out, threads=a.threads)

    p.set_defaults(func=run)


def _corpus(sub):
    p = sub.add_parser("corpus", help="prepare or describe the default corpus")
    p.add_argument("action", choices=["fetch", "info"])
    p.add_argument("--corpus", default="austen")

    def run(a):
        from rlrs.data import cli_corpus

        return cli_corpus(a.action, a.corpus)

    p.set_defaults(func=run)


def _submit(sub):
    p = sub.add_parser("submit", help="run one run directory's config through submitit and wait")
    p.add_argument("run_dirs", type=Path, nargs="+")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--plan", type=Path, default=None, help="plan.json holding the run's config (default: results/<study>/plan.json above RUN_DIR)")
    src.add_argument("--study", type=Path, default=None, help="study file to expand instead of a plan")
    p.add_argument("--executor", choices=["local", "slurm", "debug"], default=None, help="override the study's executor.kind")

    def run(a):
        from rlrs.launch import cli_submit

        return cli_submit(a.run_dirs, study=a.study, executor=a.executor, plan=a.plan)

    p.set_defaults(func=run)


def _plan(sub):
    p = sub.add_parser("plan", help="count a study's runs, tokens, FLOPs and CPU time")
    p.add_argument("study", type=Path)

    def run(a):
        from rlrs.study import cli_plan

        return cli_plan(a.study)

    p.set_defaults(func=run)


def _status(sub):
    p = sub.add_parser("status", help="show each run of a study as done, running, failed, diverged or missing")
    p.add_argument("study", type=Path)

    def run(a):
        from rlrs.study import cli_status

        return cli_status(a.study)

    p.set_defaults(func=run)


def _collect(sub):
    p = sub.add_parser("collect", help="ingest finished run directories into the study's DuckDB")
    p.add_argument("--db", type=Path, required=True)
    p.add_argument("--study", default=None, help="study name recorded with the runs")
    p.add_argument("run_dirs", type=Path, nargs="*")
    p.add_argument("--runs-root", type=Path, default=None, help="ingest every run directory below this folder")
    p.add_argument("--plan", type=Path, default=None, help="the study's plan.json (which part of the study asked for each run)")

    def run(a):
        from rlrs.db import cli_collect

        return cli_collect(a.db, a.run_dirs, runs_root=a.runs_root, study=a.study, plan=a.plan)

    p.set_defaults(func=run)


def _query(sub):
    p = sub.add_parser("query", help="run a read-only SQL query on a study's DuckDB")
    p.add_argument("sql")
    p.add_argument("--db", type=Path, default=None, help="defaults to results/demo/rlrs.duckdb")
    p.add_argument("--format", choices=["table", "csv", "json"], default="table")

    def run(a):
        from rlrs.db import cli_query

        return cli_query(a.sql, db=a.db, fmt=a.format)

    p.set_defaults(func=run)


def _report(sub):
    p = sub.add_parser("report", help="write reports/<study>/index.html from the study's DuckDB")
    p.add_argument("study", help="study name or study YAML")
    p.add_argument("--db", type=Path, default=None)
    p.add_argument("--out", type=Path, default=None)

    def run(a):
        from rlrs.report import cli_report

        return cli_report(a.study, db=a.db, out=a.out)

    p.set_defaults(func=run)


def _tune(sub):
    p = sub.add_parser("tune", help="greedy local search at the study's tuning size, then transfer")
    p.add_argument("study", type=Path)
    p.add_argument("--search-only", action="store_true", help="stop after the searches (the Snakemake tune step)")
    p.add_argument("--executor", choices=["local", "slurm", "debug"], default=None, help="override the study's executor.kind")
    p.add_argument("--cores", type=int, default=None, help="snakemake -c for the transfer (default: all cores)")

    def run(a):
        from rlrs.tune import cli_tune

        return cli_tune(a.study, executor=a.executor, search_only=a.search_only, cores=a.cores)

    p.set_defaults(func=run)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rlrs", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_train, _corpus, _submit, _plan, _status, _collect, _query, _report, _tune):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code = args.func(args)
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
