# Collected tables and figures, built from the run directories alone.


rule collect:
    input:
        [f"{d}/summary.json" for d in RUN_DIRS],
    output:
        summaries="results/tables/summaries.parquet",
        jobs="results/tables/jobs.parquet",
    conda:
        ENV
    log:
        "results/logs/collect.log",
    script:
        "../scripts/collect.py"


rule figures:
    input:
        summaries="results/tables/summaries.parquet",
        jobs="results/tables/jobs.parquet",
        timeline=[f"{TIMELINE_RUN}/summary.json"] if TIMELINE_RUN else [],
    params:
        timeline=TIMELINE_RUN or "",
    output:
        figures=report(
            directory("results/figures"),
            patterns=["{name}.png"],
            caption="../report/figures.rst",
            category="Figures",
        ),
    conda:
        ENV
    log:
        "results/logs/figures.log",
    script:
        "../scripts/figures.py"
