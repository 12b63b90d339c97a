# Every planned run, the plan, the tune results and the lr selections
# (results/<study>/tune/ and select/, found next to plan.json) into one DuckDB file, in one transaction
# (rlrs.db.ingest). Rebuilt from the run directories whenever a run changes,
# or when the file is lost (`rule all` names it).


rule collect:
    input:
        plan=PLAN_JSON,
        trained=trained,
        tune=TUNE_RESULTS,
        select=SELECT_RESULTS,
    output:
        db=DB,
    log:
        f"{LOGS}/collect.log",
    message:
        "Collecting the runs of study {params.study} into {output.db}"
    params:
        rlrs=RLRS,
        study=STUDY,
        run_dirs=run_dirs,
    localrule: True
    shell:
        "{params.rlrs} collect --db {output.db:q} --study {params.study:q} --plan {input.plan:q} {params.run_dirs:q} > {log:q} 2>&1"
