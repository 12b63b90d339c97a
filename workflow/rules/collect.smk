# Every planned run and the plan into one DuckDB file, in one transaction
# (rlrs.db.ingest). Rebuilt from the run directories whenever a run changes.


rule collect:
    input:
        plan=PLAN_JSON,
        summaries=SUMMARIES,
    output:
        DB,
    params:
        run_dirs=expand(f"{RUNS}/{{run_id}}", run_id=RUN_IDS),
    localrule: True
    shell:
        "rlrs collect --db {output} --study {STUDY} --plan {input.plan} {params.run_dirs}"
