# Every planned run, the plan and the tune results (results/<study>/tune/,
# found next to plan.json) into one DuckDB file, in one transaction
# (rlrs.db.ingest). Rebuilt from the run directories whenever a run changes.


rule collect:
    input:
        plan=PLAN_JSON,
        trained=trained,
        tune=TUNE_RESULTS,
    output:
        DB,
    params:
        run_dirs=run_dirs,
    localrule: True
    shell:
        "rlrs collect --db {output} --study {STUDY} --plan {input.plan} {params.run_dirs}"
