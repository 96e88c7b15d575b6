"""Real runs: the replay client, token synthesis, and metrics collection (NVML, Prometheus)."""
