"""Serving: the OpenAI-compatible server (FastAPI + vLLM) and its commands (serve, demo, chat, models)."""

__version__ = "0.1.0"
