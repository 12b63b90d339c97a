"""Studies: a study file -> the resolved run configs it asks for -> plan.json.

validate   the JSON Schema and the cross-field checks; load_study
expand     the sweeps of the protocol -> (run_id, resolved config, labels)
searches   the tune block's searches as data, and their results on disk
bracketing the stage-1 lr decision of a staged study (pure)
selection  a staged study's stage-1 lr selections as data, and their results on disk
plan       plan.json: Plan, make_plan / tuned_plan, its schema and reader
reuse      copying another study's finished runs (reuse_runs_from)
estimate   tokens, FLOPs and time per run (imports the model, hence torch;
           not imported here, so that `import rlrs.study` stays torch-free)
"""

from rlrs.study.expand import expand
from rlrs.study.plan import (
    Plan,
    chunks,
    load_plan,
    make_plan,
    plan_digest,
    plan_for_snakemake,
    tuned_plan,
    write_plan,
)
from rlrs.study.searches import result_paths, tune_digest
from rlrs.study.selection import result_paths as select_paths
from rlrs.study.selection import select_digest
from rlrs.study.validate import check_study, is_staged, load_study, size_family

__all__ = [
    "Plan",
    "check_study",
    "is_staged",
    "chunks",
    "expand",
    "load_plan",
    "load_study",
    "make_plan",
    "plan_digest",
    "plan_for_snakemake",
    "result_paths",
    "select_digest",
    "select_paths",
    "size_family",
    "tune_digest",
    "tuned_plan",
    "write_plan",
]
