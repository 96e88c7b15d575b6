# Collected tables and figures, built from the run directories alone.


rule collect:
    input:
        [f"{d}/summary.json" for d in RUN_DIRS],
    output:
        summaries="results/tables/summaries.parquet",
        jobs="results/tables/jobs.parquet",
    params:
        code=ANALYSIS_CODE,
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
        # The reactive autoscaler's run of the timeline's cell, drawn beside it when the grid has one.
        timeline_peer=[
            f"{d}/summary.json"
            for d in RUN_DIRS
            if TIMELINE_RUN
            and d != TIMELINE_RUN
            and Path(d).parts == Path(TIMELINE_RUN).parts[:3] + ("vllm-autoscale",) + Path(TIMELINE_RUN).parts[4:]
        ],
        fidelity=["results/tables/fidelity.parquet"] if REAL_PAIRS else [],
        real=[f"{r}/summary.json" for r, _ in REAL_PAIRS],
    params:
        code=ANALYSIS_CODE,
        timeline=lambda w, input: str(Path(input.timeline[0]).parent) if input.timeline else "",
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
