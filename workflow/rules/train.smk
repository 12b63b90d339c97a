# plan.json: what the study asks for (runs with their labels, each run's
# resolved config, the executor settings). Rewritten whenever its content
# would change (the digest is a params rerun trigger; computed from the tune and
# select results on disk, without waiting on their checkpoints: a param that
# waits on a checkpoint counts as changed until the checkpoint is checked,
# which reran collect and report after every finished run); the train rules read it
# as `ancient` so that rewriting it (or rebuilding a lost one) does not retrain
# finished runs.


rule plan:
    input:
        TUNE_RESULTS,
        SELECT_RESULTS,
    output:
        plan=PLAN_JSON,
    log:
        f"{LOGS}/plan.log",
    message:
        "Writing the plan of study {params.study}: {output.plan}"
    params:
        study=STUDY,
        digest=lambda wildcards: rlrs.study.plan_digest(
            rlrs.study.plan_for_snakemake(config, configfiles=workflow.overwrite_configfiles, default_file=DEFAULT_STUDY)
        ),
    localrule: True
    run:
        write_plan(output.plan, log[0])


# One job per run id: `rlrs submit` sends it through the study's submitit
# executor, waits, and fails with the job's log paths (in this rule's log,
# which Snakemake prints when the job fails: profiles/default). A diverged run
# is a finished result (exit 0); a failed one leaves RUN_DIR/failure.json and
# is redone by the next snakemake call. Each run uses one torch thread, so
# `-c 2` trains two at once here. The rule itself only submits and waits, so it
# stays local whatever executor Snakemake uses; with a Slurm study, `-c N`
# caps the number of jobs in flight (a waiting submitter uses no CPU).
# The summary is an `update` output: Snakemake does not delete it before the
# job runs, so a job rerun for any reason other than a lost summary (a rebuilt
# plan.json, a changed rule) finds the run finished and trains nothing. To
# train a run again, delete its run directory.
# A run that finished in a study of the study's reuse_runs_from is copied from
# there by `rlrs submit` (rlrs.study.reuse) instead of trained: no job starts.
rule train:
    input:
        plan=ancient(PLAN_JSON),
    output:
        update(f"{RUNS}/{{run_id}}/summary.json"),
    log:
        f"{LOGS}/train/{{run_id}}.log",
    message:
        "Training run {wildcards.run_id} of study {params.study}"
    params:
        rlrs=RLRS,
        study=STUDY,
        run_dir=run_dir,
    threads: TRAIN_THREADS
    localrule: True
    shell:
        "{params.rlrs} submit {params.run_dir:q} --plan {input.plan:q} > {log:q} 2>&1"


# With executor.runs_per_job > 1: one job per batch of runs of similar length
# (rlrs.study.Plan.batches), trained one after another in one process, so a
# grid of short runs pays for the job start and torch import once per batch.
# Its output is a marker, not the runs' summaries: Snakemake deletes a job's
# existing outputs before running it, which would throw away finished runs.
rule train_batch:
    input:
        plan=ancient(PLAN_JSON),
    output:
        touch(f"{BATCHES}/{{batch}}.done"),
    log:
        f"{LOGS}/train_batch/{{batch}}.log",
    message:
        "Training batch {wildcards.batch} of study {params.study} (runs: {params.run_dirs})"
    params:
        rlrs=RLRS,
        study=STUDY,
        run_dirs=batch_run_dirs,
    threads: TRAIN_THREADS
    localrule: True
    shell:
        "{params.rlrs} submit {params.run_dirs:q} --plan {input.plan:q} > {log:q} 2>&1"
