# The study's static HTML report (rlrs.report), from its DuckDB file.


rule report:
    input:
        DB,
    output:
        REPORT,
    localrule: True
    shell:
        "rlrs report {STUDY} --db {input} --out {output}"
