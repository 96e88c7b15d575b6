"""The ``vllm.general_plugins`` entry point of the Pythia package.

vLLM calls every ``vllm.general_plugins`` entry point in each of its processes at start-up.
Pythia registers nothing there (its scheduler is chosen with ``--scheduler-cls``); the entry
point only says, once per process, which plugin version is present and whether the installed
vLLM is the 0.32 release the scheduler plugin is written against.
"""

from __future__ import annotations

import logging

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
    if version.startswith(SUPPORTED_PREFIX):
        logger.debug("Pythia %s available (vLLM %s)", __version__, version)
    else:
        logger.warning(
            "Pythia %s supports vLLM %sx; found %s: its scheduler plugin will refuse to start",
            __version__, SUPPORTED_PREFIX, version,
        )
