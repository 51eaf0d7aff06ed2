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


def machine() -> dict[str, object]:
    """The machine fields every result records."""
    import os

    from ragtune.core.cpu import bf16_class

    return {"cpu": cpu_model(), "bf16": bf16_class(), "cores": os.cpu_count(), "mem_gib": mem_gib()}


def machine_with_load(loadavg_before: tuple[float, float, float]) -> dict[str, object]:
    """The machine block of the retrieval benchmarks: cores, CPU, Python and the load averages
    before the run (taken by the caller) and now, so a noisy run shows on its own record."""
    import os

    return {
        "nproc": len(os.sched_getaffinity(0)),  # what `nproc` prints: the cores this process may use
        "cpu": cpu_model(),
        "python": platform.python_version(),
        "loadavg_before": [round(x, 2) for x in loadavg_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
    }


def write_result(results: Path, name: str, record: dict[str, object], markdown: str) -> None:
    """bench/results/NAME.json and NAME.md, and the Markdown on stdout."""
    import json

    results.mkdir(parents=True, exist_ok=True)
    (results / f"{name}.json").write_text(json.dumps(record, indent=2) + "\n")
    (results / f"{name}.md").write_text(markdown)
    print(markdown)
