# plan.json: what the study asks for (runs with their labels, each run's
# resolved config, the executor settings). Rewritten whenever its content
# would change (the digest is a params rerun trigger); the train rules read it
# as `ancient` so that rewriting it does not retrain finished runs.


rule plan:
    input:
        TUNE_RESULTS,
    output:
        PLAN_JSON,
    params:
        digest=lambda wildcards: rlrs.study.plan_digest(current_plan()),
    localrule: True
    run:
        rlrs.study.write_plan(current_plan(), output[0])


# One job per run id: `rlrs submit` sends it through the study's submitit
# executor, waits, and fails with the job's log paths. A diverged run is a
# finished result (exit 0); a failed one leaves RUN_DIR/failure.json and is
# redone by the next snakemake call. Each run uses one torch thread, so
# `-c 2` trains two at once here. The rule itself only submits and waits, so it
# stays local whatever executor Snakemake uses; with a Slurm study, `-c N`
# caps the number of jobs in flight (a waiting submitter uses no CPU).
rule train:
    input:
        ancient(PLAN_JSON),
    output:
        f"{RUNS}/{{run_id}}/summary.json",
    threads: 1
    localrule: True
    shell:
        "rlrs submit {RUNS}/{wildcards.run_id} --plan {input}"


# With executor.runs_per_job > 1: one job per batch of runs of similar length
# (rlrs.study.Plan.batches), trained one after another in one process, so a
# grid of short runs pays for the job start and torch import once per batch.
# Its output is a marker, not the runs' summaries: Snakemake deletes a job's
# existing outputs before running it, which would throw away finished runs.
rule train_batch:
    input:
        ancient(PLAN_JSON),
    output:
        touch(f"{BATCHES}/{{batch}}.done"),
    params:
        run_dirs=batch_run_dirs,
    threads: 1
    localrule: True
    shell:
        "rlrs submit {params.run_dirs} --plan {input}"
