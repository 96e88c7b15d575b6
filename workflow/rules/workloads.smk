# Workloads: a canonical trace per workflow spec, and statistics of every workload.


rule workload_trace:
    input:
        "workloads/{spec}.yaml",
    output:
        "results/workloads/{spec}.jsonl.gz",
    params:
        pythia=PYTHIA,
        seed=config["seed"],
        jobs=config["workload_jobs"],
    conda:
        ENV
    log:
        "results/logs/workload_trace/{spec}.log",
    shell:
        "{params.pythia} workload generate {input} --out {output} --seed {params.seed} --jobs {params.jobs} 2> {log}"


rule workload_stats:
    input:
        "results/workloads/{spec}.jsonl.gz",
    output:
        "results/workloads/stats/{spec}.json",
    params:
        pythia=PYTHIA,
    conda:
        ENV
    log:
        "results/logs/workload_stats/{spec}.log",
    shell:
        "{params.pythia} workload stats {input} --compact > {output} 2> {log}"


rule trace_stats:
    input:
        lambda w: sorted(str(p) for p in (TRACES_DIR / w.name).iterdir() if p.is_file()),
    output:
        "results/workloads/stats/trace-{name}.json",
    params:
        pythia=PYTHIA,
        path=lambda w: TRACES_DIR / w.name,
    conda:
        ENV
    log:
        "results/logs/trace_stats/{name}.log",
    shell:
        "{params.pythia} workload stats {params.path} --compact > {output} 2> {log}"


rule workload_summary:
    input:
        expand("results/workloads/stats/{spec}.json", spec=SPECS)
        + expand("results/workloads/stats/trace-{name}.json", name=TRACE_SETS),
    output:
        json="results/workloads/summary.json",
        md="results/workloads/summary.md",
    conda:
        ENV
    log:
        "results/logs/workload_summary.log",
    script:
        "../scripts/summarise_workloads.py"
