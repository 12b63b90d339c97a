"""The `rlrs` command: argparse and every command's body (what it prints,
its exit code). The work itself is the domain modules'.

Light commands stay light: the modules that import torch (train, model,
study.estimate, coordcheck), the plotting stack (report), the database
engine and the analysis (db, analysis) or submitit (launch, tune) are
imported by the command that needs them, so `rlrs submit` and `rlrs status` start without
them. `rlrs plan` imports torch (through study.estimate: counting a model's
parameters builds it on the meta device).

Exit codes: 0 success; 2 bad input (a study, config, plan or database named
with the field and what is allowed, one line on stderr, no traceback); 1 a
failure while working (a failed run or search); `rlrs train` 3 for a
diverged run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from rlrs import config as run_config
from rlrs import data, paths, rundir
from rlrs.errors import ConfigError
from rlrs.executor import KINDS, executor_settings
from rlrs.study import selection
from rlrs.study.plan import tuned_plan
from rlrs.study.searches import load_state
from rlrs.study.validate import is_staged, load_study, size_family
from rlrs.tags import SCALING

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


def _error(command: str, message) -> int:
    print(f"rlrs {command}: error: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT


# ------------------------------------------------------------------ train


def cmd_train(a) -> int:
    """`rlrs train CONFIG --out RUN_DIR [--threads N]`: train, resume or skip one run."""
    from rlrs import train

    try:
        raw = run_config.load(a.config)
        if a.threads is not None:
            raw.setdefault("train", {})["threads"] = a.threads
        s = train.train(raw, a.out)
    except ConfigError as e:
        print(f"rlrs train: bad config: {e}", file=sys.stderr)
        return train.EXIT_BAD_CONFIG
    except data.CorpusNotFoundError as e:
        print(f"rlrs train: {e}", file=sys.stderr)
        return train.EXIT_FAILED
    if s["status"] == "completed":
        print(
            f"[{s['run_id']}] completed: final eval loss {s['final_eval_loss']:.4f} nats/token "
            f"({s['final_eval_bpb']:.4f} bits/byte), {s['wall_time_s']:.1f} s"
        )
    else:
        print(f"[{s['run_id']}] {s['status']}: {s.get('error')}", file=sys.stderr)
    return train.exit_code(s)


def cmd_corpus(a) -> int:
    """`rlrs corpus fetch|info [--corpus SPEC]`."""
    if a.action == "fetch":
        if a.corpus != "austen":
            print(f"rlrs corpus fetch: only 'austen' is fetched; {a.corpus!r} is read where it lies", file=sys.stderr)
            return EXIT_BAD_INPUT
        try:
            meta = data.fetch_austen()
        except RuntimeError as e:
            print(f"rlrs corpus fetch: {e}", file=sys.stderr)
            return EXIT_FAILED
        print(
            f"austen: {meta['bytes']:,} bytes, {len(meta['books'])} books, {data.AUSTEN_PACKAGE} "
            f"{meta['version']} -> {paths.data_dir() / 'austen'}"
        )
        return EXIT_OK
    try:
        c = data.load_corpus({**run_config.DEFAULTS["data"], "corpus": a.corpus, "eval_tokens": 1})
    except (ConfigError, data.CorpusNotFoundError) as e:
        print(f"rlrs corpus info: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT if isinstance(e, ConfigError) else EXIT_FAILED
    print(json.dumps({"name": c.name, "vocab_size": c.vocab_size, **c.description}, indent=2))
    return EXIT_OK


def cmd_submit(a) -> int:
    """`rlrs submit RUN_DIR... [--plan PLAN | --study STUDY.yaml] [--executor KIND]`."""
    from rlrs import launch

    run_dirs = [Path(d) for d in a.run_dirs]
    try:
        configs, settings, reuse_from = launch.load_configs(run_dirs, a.plan, a.study)
        return launch.submit(run_dirs, configs, settings, a.executor or settings["kind"], reuse_from=reuse_from)
    except ConfigError as e:
        return _error("submit", e)


# ------------------------------------------------------------------ studies


def cmd_plan(a) -> int:
    """`rlrs plan STUDY.yaml [--after OTHER.yaml...]`: runs, tokens, FLOPs and
    time (searches first; runs other studies train for it cost 0 here)."""
    from rlrs.study import estimate as E

    try:
        study = load_study(a.study)
        est = E.estimate(study, a.study, after=E.load_after(study, a.after))
    except ConfigError as e:
        print(f"error: {a.study}: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    plan = est.plan
    counts = plan.sweep_counts()
    print(f"study {plan.name} ({a.study})  executor {executor_settings(plan.study_config)['kind']}")
    print("\n".join(E.plan_lines(est, os.cpu_count() or 1)))
    if SCALING in counts:
        n, secs = est.sweep(SCALING)
        print(f"scaling sweep: {n} unique runs, {E.fmt_seconds(secs)} of one-thread runs (shared runs included)")
    return EXIT_OK


def cmd_status(a) -> int:
    """`rlrs status STUDY.yaml`: one line per run and the counts per state."""
    try:
        study = load_study(a.study)
        plan = tuned_plan(study, study_file=a.study)
        waiting: list[str] = []
        tune_state = load_state(study) if study.get("tune") else None
        if tune_state is not None:
            waiting = [s for s in study["sizes"] if size_family(study, s) in tune_state.pending]
        selecting, failed = [], {}
        if is_staged(study):
            select_state = selection.load_state(study, tune_state)
            selecting = [s for s in study["sizes"] if s in select_state.pending and s not in waiting]
            failed = select_state.failed
    except ConfigError as e:
        print(f"error: {a.study}: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    runs_dir = paths.runs_dir(plan.name)
    labels: dict[str, list[str]] = {}
    for r in plan.runs:
        labels.setdefault(r["run_id"], []).append(r["sweep"])
    counts = dict.fromkeys(rundir.STATES, 0)
    print(f"{'run_id':<14}{'state':<10}{'size':<12}{'arm':<14}{'seed':>5}  sweeps")
    for rid, cfg in plan.configs.items():
        state = rundir.run_state(runs_dir / rid)
        counts[state] += 1
        meta = cfg["meta"]
        sweeps = ",".join(dict.fromkeys(labels[rid]))
        print(f"{rid:<14}{state:<10}{meta['size']:<12}{meta['arm']:<14}{cfg['seed']:>5}  {sweeps}")
    print(
        f"{plan.name}: {len(plan.configs)} runs in {runs_dir}: " + ", ".join(f"{counts[s]} {s}" for s in rundir.STATES)
    )
    if waiting:
        print(
            f"{plan.name}: not planned until their family's tuning search is done (`rlrs tune {a.study}`): "
            + ", ".join(waiting)
        )
    if selecting:
        print(
            f"{plan.name}: measured only once their lr selection is done (`rlrs select {a.study}`): "
            + ", ".join(selecting)
        )
    for (size, arm), why in failed.items():
        print(f"{plan.name}: {size} is not measured: the lr selection of {size}.{arm} failed ({why})")
    return EXIT_OK


def cmd_tune(a) -> int:
    """`rlrs tune STUDY.yaml [--search-only] [--executor KIND] [--cores N]`."""
    from rlrs import tune

    try:
        study = load_study(a.study)
        tune.tune(study, executor=a.executor, log=lambda m: print(m, flush=True), cores=a.cores)
    except ConfigError as e:
        return _error("tune", f"{a.study}: {e}")
    except tune.TuneError as e:
        print(f"rlrs tune: error: {e}", file=sys.stderr)
        return EXIT_FAILED
    if a.search_only:
        return EXIT_OK
    cmd = tune.transfer_command(a.study, a.cores)
    print("transfer: " + " ".join(cmd), flush=True)
    return subprocess.run(cmd).returncode


def cmd_select(a) -> int:
    """`rlrs select STUDY.yaml [--executor KIND] [--cores N]`: stage 1 of a staged study."""
    from rlrs import select_lr, tune

    try:
        study = load_study(a.study)
        docs = select_lr.select(study, executor=a.executor, cores=a.cores, log=lambda m: print(m, flush=True))
    except ConfigError as e:
        return _error("select", f"{a.study}: {e}")
    except (select_lr.SelectError, tune.TuneError) as e:
        print(f"rlrs select: error: {e}", file=sys.stderr)
        return EXIT_FAILED
    failed = [f"{d['size']}.{d['arm']}" for d in docs if selection.is_failed(d)]
    unbracketed = [f"{d['size']}.{d['arm']}" for d in docs if not d["bracketed"] and not selection.is_failed(d)]
    print(
        f"select: {len(docs)} cell(s) done"
        + (f"; unbracketed (cap reached): {', '.join(unbracketed)}" if unbracketed else "")
        + (f"; FAILED (no lr trained; their sizes are not measured): {', '.join(failed)}" if failed else "")
    )
    return EXIT_OK


# ------------------------------------------------------------------ results


def cmd_collect(a) -> int:
    """`rlrs collect`: ingest run directories (given, and/or every directory
    below --runs-root holding a config.json) and the plan, and compute the
    analysis views in the same transaction. Skipped runs are named on
    stderr; exit 0 unless the input itself is bad (2)."""
    from rlrs import analysis, db

    try:
        dirs = [Path(d) for d in a.run_dirs]
        absent = [str(d) for d in dirs if not d.is_dir()]
        if absent:
            raise db.DatabaseError(f"run directory not found: {', '.join(absent)}")
        if a.runs_root is not None:
            if not Path(a.runs_root).is_dir():
                raise db.DatabaseError(f"--runs-root {a.runs_root} is not a directory")
            dirs += sorted(p.parent for p in Path(a.runs_root).rglob(rundir.CONFIG))
        if not dirs and a.runs_root is None and a.plan is None:
            raise db.DatabaseError("nothing to collect: give run directories, --runs-root or --plan")
        dirs = list(dict.fromkeys(dirs))  # a directory named twice is read once
        tune = db.tune_results(a.plan) if a.plan is not None else None
        select = db.select_results(a.plan) if a.plan is not None else None
        result = db.ingest(
            a.db,
            dirs,
            study=a.study,
            plan=a.plan,
            after_ingest=analysis.materialize,
            progress=True,
            tune=tune,
            select=select,
        )
    except (db.DatabaseError, ConfigError) as e:
        return _error("collect", e)
    for s in result.skipped:
        print(f"rlrs collect: skipped {s.run_dir}: {s.reason}", file=sys.stderr)
    print(
        f"collected into {a.db} in {result.seconds:.2f} s: {len(result.ingested)} run(s) written, "
        f"{len(result.unchanged)} unchanged, {len(result.skipped)} skipped"
    )
    return EXIT_OK


def cmd_query(a) -> int:
    """`rlrs query SQL`: a read-only, file-system-free connection; print the result."""
    import polars as pl

    from rlrs import db

    try:
        frame = db.read_frame(a.db if a.db is not None else paths.DEFAULT_DB, a.sql, sandboxed=True)
    except db.DatabaseError as e:
        return _error("query", e)
    if a.format == "csv":
        sys.stdout.write(frame.write_csv())
    elif a.format == "json":
        sys.stdout.write(frame.write_json() + "\n")
    elif frame.width:
        # Show every row and column: this is the whole answer, not a preview
        # (65,535 characters is the widest table polars draws; long strings are cut at 80).
        with pl.Config(
            tbl_rows=-1, tbl_cols=-1, fmt_str_lengths=80, tbl_width_chars=65_535, tbl_hide_dataframe_shape=True
        ):
            print(frame)
    return EXIT_OK


def study_name(study: str) -> str:
    """A study name, or a study YAML path whose stem is the name."""
    p = Path(study)
    return p.stem if p.suffix in (".yaml", ".yml") else study


def cmd_report(a) -> int:
    """`rlrs report STUDY [--db DB] [--out DIR | FILE.html]`."""
    from rlrs import db, report

    name = study_name(a.study)
    db_path = Path(a.db) if a.db is not None else paths.db_path(name)
    if a.out is None:
        out_html = paths.report_html(name)
    else:
        out = Path(a.out)
        out_html = out if out.suffix == ".html" else out / paths.REPORT_FILE
    try:
        built = report.write_report(name, db_path, out_html)
    except (ConfigError, db.DatabaseError) as e:
        return _error("report", e)
    print(f"wrote {out_html} ({out_html.stat().st_size / 1e6:.2f} MB, {len(built.figures)} figure(s))")
    for figure, why in built.missing.items():
        print(f"  not shown: {figure}: {why}")
    return EXIT_OK


# ------------------------------------------------------------------ parametrization


def cmd_coordcheck(a) -> int:
    """`rlrs coordcheck CONFIG --widths W1,W2,... [--steps --seeds --lr --out]`:
    train each width a few steps, write the activation RMS and its figure,
    print each layer type's growth from the narrowest to the widest width."""
    from rlrs import coordcheck as cc

    try:
        frame = cc.coordcheck(
            run_config.load(a.config), cc.parse_widths(a.widths), steps=a.steps, seeds=a.seeds, lr=a.lr
        )
    except ConfigError as e:
        print(f"rlrs coordcheck: bad input: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except data.CorpusNotFoundError as e:
        print(f"rlrs coordcheck: {e}", file=sys.stderr)
        return EXIT_FAILED
    written = cc.write(frame, a.out or paths.coordcheck_dir(Path(a.config).stem))
    g = {(r["layer_type"], r["step"]): r["growth"] for r in cc.growth(frame).iter_rows(named=True)}
    kinds = [k for k in cc.LAYER_TYPES if (k, 1) in g]
    print(f"activation RMS at width {frame['width'].max()} / at width {frame['width'].min()}:")
    print(f"{'':15}" + "".join(f"{'step ' + str(s):>9}" for s in range(1, a.steps + 1)))
    for kind in kinds:
        print(f"{kind:15}" + "".join(f"{g[kind, s]:9.3g}" for s in range(1, a.steps + 1)))
    print("wrote " + ", ".join(str(p) for p in written))
    return EXIT_OK


# ------------------------------------------------------------------ parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rlrs", description="rlrs: scaling studies of decoupled relative learning-rate schedules"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train (or resume, or skip) one run")
    p.add_argument("config", type=Path, help="run config YAML or JSON")
    p.add_argument("--out", type=Path, required=True, help="run directory")
    p.add_argument("--threads", type=int, default=None, help="override train.threads")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("corpus", help="prepare or describe the default corpus")
    p.add_argument("action", choices=["fetch", "info"])
    p.add_argument("--corpus", default="austen")
    p.set_defaults(func=cmd_corpus)

    p = sub.add_parser("submit", help="run one run directory's config through submitit and wait")
    p.add_argument("run_dirs", type=Path, nargs="+")
    src = p.add_mutually_exclusive_group()
    src.add_argument(
        "--plan",
        type=Path,
        default=None,
        help="plan.json holding the run's config (default: results/<study>/plan.json above RUN_DIR)",
    )
    src.add_argument("--study", type=Path, default=None, help="study file to expand instead of a plan")
    p.add_argument("--executor", choices=KINDS, default=None, help="override the study's executor.kind")
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("plan", help="count a study's runs, tokens, FLOPs and CPU time")
    p.add_argument("study", type=Path)
    p.add_argument("--after", type=Path, nargs="+", default=[], help="reuse_runs_from studies that run first")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("status", help="show each run of a study as done, running, failed, diverged or missing")
    p.add_argument("study", type=Path)
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("collect", help="ingest finished run directories into the study's DuckDB")
    p.add_argument("--db", type=Path, required=True)
    p.add_argument("--study", default=None, help="study name recorded with the runs")
    p.add_argument("run_dirs", type=Path, nargs="*")
    p.add_argument("--runs-root", type=Path, default=None, help="ingest every run directory below this folder")
    p.add_argument(
        "--plan", type=Path, default=None, help="the study's plan.json (which part of the study asked for each run)"
    )
    p.set_defaults(func=cmd_collect)

    p = sub.add_parser("query", help="run a read-only SQL query on a study's DuckDB")
    p.add_argument("sql")
    p.add_argument("--db", type=Path, default=None, help=f"defaults to {paths.DEFAULT_DB}")
    p.add_argument("--format", choices=["table", "csv", "json"], default="table")
    p.set_defaults(func=cmd_query)

    p = sub.add_parser("report", help="write reports/<study>/index.html from the study's DuckDB")
    p.add_argument("study", help="study name or study YAML")
    p.add_argument("--db", type=Path, default=None)
    p.add_argument("--out", type=Path, default=None)
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("tune", help="greedy local search at the study's tuning size, then transfer")
    p.add_argument("study", type=Path)
    p.add_argument("--search-only", action="store_true", help="stop after the searches (the Snakemake tune step)")
    p.add_argument("--executor", choices=KINDS, default=None, help="override the study's executor.kind")
    p.add_argument(
        "--cores",
        type=int,
        default=None,
        help="local jobs at once, and snakemake -c for the transfer (default: all cores)",
    )
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("select", help="stage 1 of a staged study: choose each (size, arm)'s lr, bracketing it")
    p.add_argument("study", type=Path)
    p.add_argument("--executor", choices=KINDS, default=None, help="override the study's executor.kind")
    p.add_argument("--cores", type=int, default=None, help="local executor: jobs at once (default: all cores)")
    p.set_defaults(func=cmd_select)

    p = sub.add_parser("coordcheck", help="coordinate check: activation RMS vs width after a few steps")
    p.add_argument("config", type=Path, help="run config YAML or JSON (its d_model is the reference width)")
    p.add_argument("--widths", required=True, help="comma-separated d_model values, e.g. 64,128,256,512")
    p.add_argument("--steps", type=int, default=5, help="optimizer steps per width (default 5)")
    p.add_argument("--seeds", type=int, default=3, help="seeds averaged per width (default 3)")
    p.add_argument("--lr", type=float, default=None, help="override optim.lr")
    p.add_argument("--out", type=Path, default=None, help="output folder (default results/coordcheck/<config name>)")
    p.set_defaults(func=cmd_coordcheck)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ConfigError as e:
        # A refused setting that a command did not catch itself: the one line, no traceback.
        return _error(args.command, e)


if __name__ == "__main__":
    sys.exit(main())
