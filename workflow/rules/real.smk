# Real runs: `pythia run` starts one engine with the system's flags, replays the workload,
# records NVML and Prometheus metrics, and writes the simulator's tables. GPU backends ask
# for one GPU and pin it themselves (pythia.bench.gpu_slots); on the CPU backend a run takes
# both cores so that no simulation competes with the engine it measures.


rule real_run:
    input:
        workload=_workload_files,
        system=_system_files,
    output:
        summary=f"{REAL_DIR}/{{experiment}}/{{system}}/{{load}}/seed{{seed}}/summary.json",
        calls=f"{REAL_DIR}/{{experiment}}/{{system}}/{{load}}/seed{{seed}}/calls.parquet",
        jobs=f"{REAL_DIR}/{{experiment}}/{{system}}/{{load}}/seed{{seed}}/jobs.parquet",
        timeseries=f"{REAL_DIR}/{{experiment}}/{{system}}/{{load}}/seed{{seed}}/timeseries.parquet",
    wildcard_constraints:
        load=r"[cr][0-9.]+",
        seed=r"\d+",
    params:
        pythia=PYTHIA,
        code=RUN_CODE,
        backend=lambda w: real_backend(w.system),
        workload=lambda w: experiment_workload(w.experiment),
        args=_real_args,
        out=lambda w, output: str(Path(output.summary).parent),
    threads: 2
    resources:
        gpu=0 if REAL["backend"] == "vllm-cpu" else 1,
    conda:
        ENV
    log:
        f"results/logs/real/{{experiment}}/{{system}}/{{load}}/seed{{seed}}.log",
    shell:
        "{params.pythia} run --backend {params.backend} --system {wildcards.system} "
        "--workload {params.workload} {params.args} --out {params.out} 2> {log}"


rule fidelity_table:
    input:
        real=[f"{r}/summary.json" for r, _ in REAL_PAIRS],
        sim=[f"{s}/summary.json" for _, s in REAL_PAIRS],
    output:
        "results/tables/fidelity.parquet",
    conda:
        ENV
    log:
        "results/logs/fidelity.log",
    script:
        "../scripts/fidelity.py"
