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
# $RLRS_REPORTS/<study>/index.html (default reports/).

from snakemake.utils import min_version, validate

import rlrs.config

min_version("9.0")

if not config:
    configfile: workflow.source_path("workflow/configs/demo.yaml")

# Snakemake reads YAML 1.1, where `3e-3` is a string; rlrs reads numbers as YAML 1.2 does.
rlrs.config.yaml12_numbers(config)
validate(config, "workflow/schemas/study.schema.yaml")


include: "workflow/rules/common.smk"
include: "workflow/rules/tune.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/collect.smk"
include: "workflow/rules/report.smk"


# The report, and every run's summary (or batch marker) named too: Snakemake
# does not rebuild a missing intermediate file when the files made from it are
# up to date, so a lost summary.json would otherwise go unnoticed.
rule all:
    default_target: True
    input:
        REPORT,
        trained,
