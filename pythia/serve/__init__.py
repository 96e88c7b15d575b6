"""Serving real engines: the vLLM scheduler plugin, engine launch commands, the tiny model.

- :mod:`pythia.serve.adapter`: the hooks an engine host calls (scheduling, cache) and the
  request view it hands them; stock FCFS/LRU defaults;
- :mod:`pythia.serve.vllm_scheduler`: the plugin (``--scheduler-cls``) that carries out the
  hooks inside vLLM 0.32; :mod:`pythia.serve.pins`: pins and demotions on vLLM's block pool;
- :mod:`pythia.serve.engines` and :mod:`pythia.serve.server`: launch commands of vLLM (CPU,
  GPU) and SGLang servers, and a process manager with health checks;
- :mod:`pythia.serve.tiny_model`: a tiny random Llama and tokenizer written locally;
- :mod:`pythia.serve.cli`: ``pythia serve`` (``pythia run`` and ``pythia calibrate`` are in
  :mod:`pythia.bench.cli`).
"""
