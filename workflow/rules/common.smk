# The study expanded once, at parse time, before any job starts: schema and
# cross-field checks and rlrs.config.resolve() on every run config
# (rlrs.study.make_plan). A bad study stops here with the field named.

from pathlib import Path

import rlrs.study

PLAN = rlrs.study.plan_for_snakemake(
    config,
    configfiles=workflow.overwrite_configfiles,
    default_file=Path(workflow.basedir) / "workflow" / "configs" / "demo.yaml",
)
STUDY = PLAN.name
RESULTS = str(rlrs.study.results_dir(STUDY))
RUNS = f"{RESULTS}/runs"
PLAN_JSON = f"{RESULTS}/plan.json"
DB = f"{RESULTS}/rlrs.duckdb"
REPORT = f"{rlrs.study.reports_dir(STUDY)}/index.html"
RUN_IDS = PLAN.run_ids
SUMMARIES = [f"{RUNS}/{run_id}/summary.json" for run_id in RUN_IDS]

wildcard_constraints:
    run_id="[0-9a-f]{12}",
