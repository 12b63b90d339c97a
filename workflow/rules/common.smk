# The study expanded once, at parse time, before any job starts: schema and
# cross-field checks and rlrs.config.resolve() on every run config
# (rlrs.study.make_plan). A bad study stops here with the field named.

from pathlib import Path

import rlrs.study
import rlrs.tune

DEFAULT_STUDY = Path(workflow.basedir) / "workflow" / "configs" / "demo.yaml"
# With a tune block, the plan as things stand at parse time: the tuned
# settings of the searches already finished (rlrs.study.tuned_plan).
PLAN = rlrs.study.plan_for_snakemake(config, configfiles=workflow.overwrite_configfiles, default_file=DEFAULT_STUDY)
STUDY = PLAN.name
RESULTS = str(rlrs.study.results_dir(STUDY))
RUNS = f"{RESULTS}/runs"
PLAN_JSON = f"{RESULTS}/plan.json"
DB = f"{RESULTS}/rlrs.duckdb"
REPORT = f"{rlrs.study.reports_dir(STUDY)}/index.html"
RUN_IDS = PLAN.run_ids
SUMMARIES = [f"{RUNS}/{run_id}/summary.json" for run_id in RUN_IDS]
STUDY_FILE = PLAN.study_file
# The results of the study's searches (none without a tune block): the
# outputs of the `tune` checkpoint (workflow/rules/tune.smk).
TUNE_RESULTS = rlrs.tune.result_paths(PLAN.study_config)

wildcard_constraints:
    run_id="[0-9a-f]{12}",


# The run ids of a tune study depend on the searches' results, so every rule
# that lists runs asks through these functions: they wait for the tune
# checkpoint, then expand the study again with the tuned settings. Without a
# tune block they return the parse-time plan.
_TUNED_PLAN = []


def current_plan():
    if not TUNE_RESULTS:
        return PLAN
    checkpoints.tune.get()
    if not _TUNED_PLAN:
        _TUNED_PLAN.append(rlrs.study.plan_for_snakemake(config, configfiles=workflow.overwrite_configfiles, default_file=DEFAULT_STUDY))
    return _TUNED_PLAN[0]


def summaries(wildcards=None):
    return [f"{RUNS}/{run_id}/summary.json" for run_id in current_plan().run_ids]


def run_dirs(wildcards=None):
    return [f"{RUNS}/{run_id}" for run_id in current_plan().run_ids]
