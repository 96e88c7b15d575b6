"""The ``vllm.general_plugins`` entry point of the Pythia package.

vLLM calls every ``vllm.general_plugins`` entry point in each of its processes at start-up.
Pythia's scheduler is chosen with ``--scheduler-cls``; the entry point says, once per
process, which plugin version is present and whether the installed vLLM is the 0.32 release
the scheduler plugin is written against. In a top-level process (the API server) it also puts
the collector on prometheus_client's registry that relays the engine processes' plugin
metrics to ``/metrics`` (:mod:`pythia.serve.metrics`).
"""

from __future__ import annotations

import logging
import multiprocessing

from pythia import __version__

logger = logging.getLogger("vllm.plugins.pythia")
SUPPORTED_PREFIX = "0.32."


def register() -> None:
    """Log the plugin version and check the vLLM version; never raises."""
    try:
        import vllm

        version = getattr(vllm, "__version__", "unknown")
    except Exception:  # noqa: BLE001 - a plugin hook must not break vLLM's start-up
        version = "unknown"
    if multiprocessing.parent_process() is None:
        try:
            from pythia.serve.metrics import install_relay

            install_relay()
        except Exception:  # noqa: BLE001 - metrics must not break vLLM's start-up
            logger.warning("Pythia: the plugin's metrics cannot be relayed to /metrics", exc_info=True)
    if version.startswith(SUPPORTED_PREFIX):
        logger.debug("Pythia %s available (vLLM %s)", __version__, version)
    else:
        logger.warning(
            "Pythia %s supports vLLM %sx; found %s: its scheduler plugin will refuse to start",
            __version__, SUPPORTED_PREFIX, version,
        )
