# The study's static HTML report (rlrs.report), from its DuckDB file.


rule report:
    input:
        db=DB,
    output:
        report=REPORT,
    log:
        f"{LOGS}/report.log",
    message:
        "Writing the report of study {params.study}: {output.report}"
    params:
        rlrs=RLRS,
        study=STUDY,
    localrule: True
    shell:
        "{params.rlrs} report {params.study:q} --db {input.db:q} --out {output.report:q} > {log:q} 2>&1"
