# The study expanded once, at parse time, before any job starts: schema and
# cross-field checks and rlrs.config.resolve() on every run config
# (rlrs.study.make_plan). A bad study stops here: its one error line, naming
# the field and what is allowed, and exit code 2 (as `rlrs plan`), with no
# traceback (a SystemExit ends Snakemake's parse without one).

import shlex
import sys
from pathlib import Path

import rlrs.study
import rlrs.executor
import rlrs.paths
from rlrs.errors import ConfigError

DEFAULT_STUDY = Path(workflow.basedir) / "workflow" / "configs" / "demo.yaml"
GIVEN_STUDY = workflow.overwrite_configfiles[-1] if workflow.overwrite_configfiles else DEFAULT_STUDY
try:
    # With a tune block, the plan as things stand at parse time: the tuned
    # settings of the searches already finished (rlrs.study.tuned_plan).
    PLAN = rlrs.study.plan_for_snakemake(config, configfiles=workflow.overwrite_configfiles, default_file=DEFAULT_STUDY)
    # executor.runs_per_job > 1: runs are trained in batches, one job each (train.smk).
    RUNS_PER_JOB = rlrs.executor.executor_settings(PLAN.study_config)["runs_per_job"]
    # A local data-parallel run (executor.tasks_per_node > 1) holds that many
    # cores; a Slurm job holds none here.
    TRAIN_THREADS = (
        rlrs.executor.world_size(rlrs.executor.executor_settings(PLAN.study_config))
        if rlrs.executor.executor_settings(PLAN.study_config)["kind"] == "local"
        else 1
    )
    # The results of the study's searches (none without a tune block): the
    # outputs of the `tune` checkpoint (workflow/rules/tune.smk).
    TUNE_RESULTS = rlrs.study.result_paths(PLAN.study_config)
    # A staged study's lr selections (none unless it has selection_seeds): the
    # outputs of the `select` checkpoint (workflow/rules/select.smk).
    SELECT_RESULTS = rlrs.study.select_paths(PLAN.study_config)
except ConfigError as error:
    print(f"error: {GIVEN_STUDY}: {error}", file=sys.stderr)
    sys.exit(2)

# Every job runs the rlrs of the Python that runs Snakemake (its venv), never
# whatever `rlrs` PATH holds: `make demo` calls .venv/bin/snakemake without
# the venv on PATH.
RLRS = f"{shlex.quote(sys.executable)} -m rlrs"
STUDY = PLAN.name
STUDY_FILE = PLAN.study_file
RESULTS = str(rlrs.paths.results_dir(STUDY))
RUNS = f"{RESULTS}/runs"
LOGS = f"{RESULTS}/logs"
PLAN_JSON = f"{RESULTS}/plan.json"
DB = f"{RESULTS}/rlrs.duckdb"
REPORT = f"{rlrs.paths.reports_dir(STUDY)}/index.html"
BATCHES = f"{RESULTS}/batches"

wildcard_constraints:
    run_id="[0-9a-f]{12}",
    batch="[0-9a-f]{12}",


# The run ids of a tune study depend on the searches' results, and those of a
# staged study on the chosen lrs, so every step that lists runs asks through
# these functions: they wait for the tune and select checkpoints, then expand
# the study again with the tuned settings at the chosen lrs. Without either
# they return the parse-time plan.
_TUNED_PLAN = []


def current_plan():
    if not TUNE_RESULTS and not SELECT_RESULTS:
        return PLAN
    if TUNE_RESULTS:
        checkpoints.tune.get()
    if SELECT_RESULTS:
        checkpoints.select.get()
    if not _TUNED_PLAN:
        _TUNED_PLAN.append(rlrs.study.plan_for_snakemake(config, configfiles=workflow.overwrite_configfiles, default_file=DEFAULT_STUDY))
    return _TUNED_PLAN[0]


def summaries(wildcards=None):
    """The summaries that training makes (every planned run but a staged
    study's stage-1 runs, which the select checkpoint trains)."""
    return [f"{RUNS}/{run_id}/summary.json" for run_id in current_plan().workflow_run_ids]


def run_dirs(wildcards=None):
    return [f"{RUNS}/{run_id}" for run_id in current_plan().run_ids]


_BATCHES = []


def batches():
    """Batch id -> run ids, with executor.runs_per_job > 1 (Plan.batches)."""
    if not _BATCHES:
        _BATCHES.append(current_plan().batches(RUNS_PER_JOB))
    return _BATCHES[0]


def batch_run_dirs(wildcards):
    ids = batches().get(wildcards.batch)
    if ids is None:
        raise ValueError(f"batch {wildcards.batch} is not in the current plan of study {STUDY} (its batches: {BATCHES}/)")
    return [f"{RUNS}/{run_id}" for run_id in ids]


def trained(wildcards=None):
    """What the steps after training wait for: every run's summary.json, or,
    with executor.runs_per_job > 1, every batch's marker. A marker whose batch
    has lost a summary since is removed here, so that the batch is trained
    again (its finished runs are skipped) rather than the loss going unseen."""
    if RUNS_PER_JOB == 1:
        return summaries()
    markers = []
    for batch_id, ids in batches().items():
        marker = Path(f"{BATCHES}/{batch_id}.done")
        if marker.exists() and not all(Path(f"{RUNS}/{run_id}/summary.json").exists() for run_id in ids):
            marker.unlink()
        markers.append(str(marker))
    return markers


def write_plan(path, log):
    """Rule plan: plan.json of the current plan, and one line in its log."""
    plan = current_plan()
    rlrs.study.write_plan(plan, path)
    Path(log).write_text(f"{path}: {len(plan.runs)} (run, sweep) entries, {len(plan.run_ids)} runs\n")


def run_dir(wildcards, output):
    """A train job's run directory: the folder of its summary.json."""
    return str(Path(output[0]).parent)
