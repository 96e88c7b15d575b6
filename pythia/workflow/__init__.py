"""The workload model: call annotations, workflow specs, canonical traces, generators, importers."""
