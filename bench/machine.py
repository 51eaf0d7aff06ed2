"""What machine a benchmark ran on: the CPU model and memory, read from /proc."""

from __future__ import annotations

import platform
from pathlib import Path


def _proc_field(path: str, key: str) -> str | None:
    for line in Path(path).read_text().splitlines():
        if line.startswith(key):
            return line.split(":", 1)[1].strip()
    return None


def cpu_model() -> str:
    return _proc_field("/proc/cpuinfo", "model name") or platform.processor()


def mem_gib() -> float:
    total = _proc_field("/proc/meminfo", "MemTotal")  # "131072000 kB"
    return round(int(total.split()[0]) / 2**20, 1) if total else 0.0
