"""Where things live: the repository's own files, the study output layout
`results/<study>/` and `reports/<study>/`, and the environment roots that
move them (so the Snakefile, the commands and the tests agree).

    $RLRS_RESULTS/<study>/            (default results/<study>/)
        plan.json                     the expanded study (rlrs.study.plan)
        runs/<run_id>/                one run directory each (rlrs.rundir)
        tune/<size>.<arm>.json        a search's result (rlrs.tune)
        select/<size>.<arm>.json      an lr selection's result (rlrs.select)
        batches/                      Snakemake's batch markers
        rlrs.duckdb                   the study's database (rlrs.db)
    $RLRS_REPORTS/<study>/index.html  the report (rlrs.report), figures/ beside it
    $RLRS_RESULTS/coordcheck/<name>/  `rlrs coordcheck`'s default output (rlrs.coordcheck)
    $RLRS_DATA_DIR                    corpora and tokenizers (default ~/.cache/rlrs)
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
SNAKEFILE = REPO_ROOT / "Snakefile"
STUDY_SCHEMA = REPO_ROOT / "workflow" / "schemas" / "study.schema.yaml"

RESULTS_ENV = "RLRS_RESULTS"
REPORTS_ENV = "RLRS_REPORTS"
DATA_ENV = "RLRS_DATA_DIR"

PLAN_FILE = "plan.json"
DB_FILE = "rlrs.duckdb"
RUNS_DIR = "runs"
TUNE_DIR = "tune"
SELECT_DIR = "select"
REPORT_FILE = "index.html"
FIGURES_DIR = "figures"

# `rlrs query` without --db: the demo study's database.
DEFAULT_DB = Path("results") / "demo" / DB_FILE


def results_root() -> Path:
    """$RLRS_RESULTS (default results/): every study's folder lies below it."""
    return Path(os.environ.get(RESULTS_ENV, "results"))


def results_dir(study: str) -> Path:
    return results_root() / study


def reports_dir(study: str) -> Path:
    return Path(os.environ.get(REPORTS_ENV, "reports")) / study


def db_path(study: str) -> Path:
    return results_dir(study) / DB_FILE


def plan_path(study: str) -> Path:
    return results_dir(study) / PLAN_FILE


def runs_dir(study: str) -> Path:
    return results_dir(study) / RUNS_DIR


def tune_dir(study: str, root: Path | None = None) -> Path:
    """results/<study>/tune/, or tune/ below `root` (a results/<study>/ folder)."""
    return (root if root is not None else results_dir(study)) / TUNE_DIR


def select_dir(study: str, root: Path | None = None) -> Path:
    """results/<study>/select/, or select/ below `root` (a results/<study>/ folder)."""
    return (root if root is not None else results_dir(study)) / SELECT_DIR


def coordcheck_dir(name: str) -> Path:
    """`rlrs coordcheck CONFIG`'s default output: results/coordcheck/<config name>/."""
    return Path(os.environ.get(RESULTS_ENV, "results")) / "coordcheck" / name


def report_html(study: str) -> Path:
    return reports_dir(study) / REPORT_FILE


def plan_of_run_dir(run_dir: Path) -> Path:
    """results/<study>/plan.json for results/<study>/runs/<run_id>/."""
    return Path(run_dir).resolve().parent.parent / PLAN_FILE


def data_dir() -> Path:
    """Where fetched corpora and trained tokenizers live: $RLRS_DATA_DIR or ~/.cache/rlrs."""
    return Path(os.environ.get(DATA_ENV) or Path.home() / ".cache" / "rlrs")
