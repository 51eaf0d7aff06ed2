"""Run at start-up by every Python process the ragtune server spawns (see serving/lifeline.py):
SIGKILL when the parent dies; and vLLM's log level from its first line. Standalone (ctypes and
logging only): it runs before anything is imported."""

import os
import sys


def _die_with_parent() -> None:
    server = os.environ.get("RAGTUNE_ENGINE_PARENT", "")
    if not server.isdigit() or int(server) == os.getpid() or not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    parent = os.getppid()
    if ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0) != 0:  # PR_SET_PDEATHSIG
        return
    if os.getppid() != parent:  # the parent died before the request was made
        os._exit(1)


def _vllm_log_level() -> None:
    """vLLM sets its log level (VLLM_LOGGING_LEVEL) once imported; what it logs while importing
    itself ("Triton is installed, but ...") would pass below that level. ragtune's CLI sets
    ERROR unless the operator chose a level (ragtune/quiet.py)."""
    level = os.environ.get("VLLM_LOGGING_LEVEL", "").upper()
    if level in ("ERROR", "CRITICAL"):
        import logging

        logging.getLogger("vllm").setLevel(level)


_die_with_parent()
_vllm_log_level()
