"""Pythia: agent-native LLM serving policies, a cluster simulator and the evaluation platform."""

__version__ = "0.1.0"
