"""Imported first by the `ragtune` command (ragtune/cli.py), for its effect: a quiet start.

vLLM's and torch's start-up notices about the machine (Triton absent on a CPU, tcmalloc not
preloaded, NUMA binding, deprecations inside vLLM) come before ragtune's ready line and ask
nothing of whoever runs ragtune: vLLM logs at ERROR unless the operator set VLLM_LOGGING_LEVEL
(`VLLM_LOGGING_LEVEL=INFO ragtune serve` shows its whole log). Applied before vLLM is imported,
from its first line (it logs while importing itself), here and in the processes that inherit the
environment (serving/lifeline_path/sitecustomize.py does the same in the engine's).
"""

from __future__ import annotations

import logging
import os
import warnings

_DEPRECATIONS = "ignore::FutureWarning:vllm.triton_utils.dispatcher"

os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
LEVEL = os.environ["VLLM_LOGGING_LEVEL"].upper()
if LEVEL in ("ERROR", "CRITICAL"):
    logging.getLogger("vllm").setLevel(LEVEL)
    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"vllm\.")
    if _DEPRECATIONS not in os.environ.get("PYTHONWARNINGS", ""):  # the engine's processes too
        os.environ["PYTHONWARNINGS"] = ",".join(
            filter(None, [os.environ.get("PYTHONWARNINGS"), _DEPRECATIONS])
        )
