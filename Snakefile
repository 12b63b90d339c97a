# rlrs workflow: study file -> run configs -> submitit jobs -> DuckDB -> report.
#
#   snakemake -c2                                             # the demo study
#   snakemake -c2 --configfile workflow/configs/smoke.yaml    # study "smoke"
#   snakemake -n --configfile workflow/configs/study-gpu.yaml # show the grid
#
# The study is Snakemake's `config`. The default study is loaded only when no
# config was given: Snakemake deep-merges --configfile on top of a
# `configfile:` default, so an unconditional default would silently fill keys
# missing from the user's study (e.g. its `sizes`).
# Results go to $RLRS_RESULTS/<study>/ (default results/), the report to
# $RLRS_REPORTS/<study>/index.html (default reports/), each job's log to
# results/<study>/logs/. Snakemake reads profiles/default/config.yaml.
#
# The study is checked against workflow/schemas/study.schema.yaml by rlrs
# itself (common.smk), not by Snakemake's `validate`: rlrs names the field and
# the allowed values in one line, where `validate` prints the whole schema.
#
# `snakemake --lint` reports one thing, on purpose: no rule names a conda
# environment or container. The rules run `python -m rlrs` with the Python
# that runs Snakemake: the pinned venv of scripts/setup.sh (environment.yml
# holds the same pins for conda users). tests/test_lint.py keeps it at that.

from snakemake.utils import min_version

import rlrs.config

min_version("9.0")

if not config:
    configfile: workflow.source_path("workflow/configs/demo.yaml")

# Snakemake reads YAML 1.1, where `3e-3` is a string; rlrs reads numbers as YAML 1.2 does.
rlrs.config.yaml12_numbers(config)


include: "workflow/rules/common.smk"
include: "workflow/rules/tune.smk"
include: "workflow/rules/select.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/collect.smk"
include: "workflow/rules/report.smk"


# Every output a user can lose is named here, so that the next call rebuilds
# it: Snakemake does not rebuild a missing intermediate file when the files
# made from it are up to date. The report, the database, plan.json, the tune
# and select results, and every run's summary (or batch marker). Rebuilding the database
# or plan.json retrains nothing (the train rules read plan.json as `ancient`).
rule all:
    default_target: True
    input:
        REPORT,
        DB,
        PLAN_JSON,
        TUNE_RESULTS,
        SELECT_RESULTS,
        trained,
    message:
        f"Study {STUDY} is complete: report {REPORT}, database {DB}"
