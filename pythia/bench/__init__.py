"""Real runs: the replay client, token synthesis, metrics collection (NVML, Prometheus), calibration,
and their commands ``pythia run`` and ``pythia calibrate`` (:mod:`pythia.bench.cli`)."""
