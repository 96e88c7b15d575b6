# The reproduction pipeline: `make reproduce` runs `snakemake --cores 2` on this file.
# Stages live in workflow/rules/*.smk; scripts in workflow/scripts/ are thin shims over pythia.


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/workloads.smk"
include: "workflow/rules/simulate.smk"
include: "workflow/rules/real.smk"
include: "workflow/rules/analysis.smk"


rule all:
    input:
        "results/workloads/summary.json",
        "results/workloads/summary.md",
        "results/figures",
