# Simulated runs: one `pythia sim` per experiment x system x load x seed.


rule sim_run:
    input:
        workload=_workload_files,
        system=_system_files,
        cluster=_cluster_files,
        tables=SIM_TABLES,
    output:
        summary="results/runs/{experiment}/{system}/{load}/seed{seed}/summary.json",
        calls="results/runs/{experiment}/{system}/{load}/seed{seed}/calls.parquet",
        jobs="results/runs/{experiment}/{system}/{load}/seed{seed}/jobs.parquet",
        timeseries="results/runs/{experiment}/{system}/{load}/seed{seed}/timeseries.parquet",
    wildcard_constraints:
        load=r"[cr][0-9.]+",
        seed=r"\d+",
    params:
        pythia=PYTHIA,
        code=RUN_CODE,
        workload=lambda w: experiment_workload(w.experiment),
        args=_sim_args,
        out=lambda w, output: str(Path(output.summary).parent),
    conda:
        ENV
    log:
        "results/logs/sim/{experiment}/{system}/{load}/seed{seed}.log",
    shell:
        "{params.pythia} sim --system {wildcards.system} --workload {params.workload} "
        "{params.args} --out {params.out} 2> {log}"
