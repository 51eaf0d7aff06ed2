"""Serving: the OpenAI-compatible server (FastAPI + vLLM) and the `ragtune` command line."""

__version__ = "0.1.0"
