# Stage 1 of a staged study (rlrs.select_lr): each (size, arm)'s base lr chosen
# on the study's selection_seeds, bracketed. A checkpoint, because the
# measurement runs' ids depend on the chosen lrs: the rules that list runs
# (common.smk's current_plan) wait for it, then expand the study at the
# chosen lrs. After the tune checkpoint (its input: the selection is centred
# on the tuned lr). `rlrs select` submits its own runs through the study's
# executor and reuses every finished one, so an interrupted selection
# resumes. Rerun when the selection's definition changes (the digest is a
# params trigger). Its progress goes to its log.

if SELECT_RESULTS:

    checkpoint select:
        input:
            TUNE_RESULTS,
        output:
            SELECT_RESULTS,
        log:
            f"{LOGS}/select.log",
        message:
            "Choosing the lrs of study {params.study}: stage 1 on its selection seeds (progress: {log})"
        params:
            rlrs=RLRS,
            study=STUDY,
            study_file=STUDY_FILE,
            digest=rlrs.study.select_digest(PLAN.study_config),
        threads: workflow.cores
        localrule: True
        shell:
            "{params.rlrs} select {params.study_file:q} --cores {threads} > {log:q} 2>&1"
