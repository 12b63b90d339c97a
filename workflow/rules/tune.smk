# Tune small (rlrs.tune): the greedy local search of every (tuning size, arm)
# of the study's tune block. A checkpoint, because the transfer runs' ids
# depend on its results: the rules that list runs (common.smk's
# current_plan) wait for it, then expand the study with the tuned settings.
# The search submits its own candidate runs through the study's executor and
# reuses every finished one, so an interrupted search resumes. Rerun when the
# search definition changes (the digest is a params trigger). Its progress
# goes to its log.

if TUNE_RESULTS:

    checkpoint tune:
        output:
            TUNE_RESULTS,
        log:
            f"{LOGS}/tune.log",
        message:
            "Tuning study {params.study}: the searches of its tune block (progress: {log})"
        params:
            rlrs=RLRS,
            study=STUDY,
            study_file=STUDY_FILE,
            digest=rlrs.study.tune_digest(PLAN.study_config),
        threads: workflow.cores
        localrule: True
        shell:
            "{params.rlrs} tune {params.study_file:q} --search-only > {log:q} 2>&1"
