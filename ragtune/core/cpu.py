"""What this CPU has for bf16: the engine's dtype, the embedder's and training's precision, and
the catalogue's measured speeds follow it."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

Bf16 = Literal["AMX", "AVX512-BF16", "none"]


@lru_cache(maxsize=1)
def bf16_class() -> Bf16:
    """AMX or AVX512-BF16 (bf16 matmuls run natively), else none (float32 is faster)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "none"
    return "AMX" if " amx_bf16" in flags else "AVX512-BF16" if " avx512_bf16" in flags else "none"


def cpu_has_bf16() -> bool:
    """AMX-BF16 or AVX512-BF16: bf16 matmuls run natively (3x fp32 for MiniLM on an AMX CPU)."""
    return bf16_class() != "none"
