"""Safetensors files read without torch: a file's header, the base model's weight shapes, and
why a LoRA tensor cannot be served (dtype, size, non-finite values, shape). core.adapters
checks every adapter with these before it reaches the engine.
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path
from typing import Any

import numpy as np


def read_safetensors_header(path: Path) -> dict[str, Any]:
    """The JSON header of a safetensors file, checked against the file's size."""
    size = path.stat().st_size
    with path.open("rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise ValueError("shorter than a safetensors header")
        (n,) = struct.unpack("<Q", head)
        if n <= 0 or 8 + n > size or n > 100 * 1024 * 1024:
            raise ValueError(f"header length {n} does not fit a {size}-byte file")
        header = json.loads(fh.read(n))
    if not isinstance(header, dict):
        raise ValueError("header is not a JSON object")
    end = 0
    for key, meta in header.items():
        if key == "__metadata__":
            continue
        try:
            end = max(end, int(meta["data_offsets"][1]))
        except (KeyError, TypeError, IndexError, ValueError):
            raise ValueError(f"tensor {key!r} has no valid data_offsets") from None
    if 8 + n + end > size:
        raise ValueError(f"truncated: tensors need {8 + n + end} bytes, the file has {size}")
    return header


def base_weight_shapes(base: Path) -> dict[str, tuple[int, ...]]:
    """Weight shape of each base-model module that owns one, by dotted module name."""
    shapes: dict[str, tuple[int, ...]] = {}
    for f in sorted(base.glob("*.safetensors")):
        for key, meta in read_safetensors_header(f).items():
            if key.endswith(".weight") and isinstance(meta, dict):
                shapes[key[: -len(".weight")]] = tuple(int(d) for d in meta.get("shape", ()))
    return shapes


def base_module_names(base: Path) -> set[str]:
    """Dotted names of the base model's modules that own a weight (from safetensors headers)."""
    return set(base_weight_shapes(base))


_FLOAT_DTYPES = {"F16": np.float16, "BF16": np.uint16, "F32": np.float32, "F64": np.float64}
_LORA_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.[^.]+)?\.weight$")


def tensor_problem(data: bytes | memoryview, meta: dict[str, Any]) -> str | None:
    """Why one tensor cannot be served (dtype, size, non-finite values), or None."""
    dtype = meta.get("dtype")
    if dtype not in _FLOAT_DTYPES:
        return f"dtype {dtype} is not a floating type (F16, BF16, F32)"
    shape = [int(d) for d in meta.get("shape", ())]
    values = np.frombuffer(data, dtype=_FLOAT_DTYPES[dtype])
    if values.size != int(np.prod(shape)):
        return f"holds {values.size} values but its shape {shape} needs {int(np.prod(shape))}"
    if dtype == "BF16":  # bfloat16 is the top half of a float32
        values = (values.astype(np.uint32) << 16).view(np.float32)
    if not np.isfinite(values).all():
        bad = int((~np.isfinite(values)).sum())
        return f"has {bad} NaN or infinite values of {values.size}"
    return None


def _rank_of(module: str, rank: int, pattern: dict[str, Any]) -> int:
    """The rank PEFT gives `module`: a rank_pattern entry matching its name's end, else `r`."""
    for key, value in pattern.items():
        if isinstance(value, int) and (module == key or re.search(rf"(^|\.){key}$", module)):
            return value
    return rank


def first_problem(
    weights: Path,
    header: dict[str, Any],
    *,
    rank: int,
    rank_pattern: dict[str, Any],
    base_shapes: dict[str, tuple[int, ...]] | None,
) -> tuple[str, str] | None:
    """Read every tensor of `weights`: the first (name, problem) of one that is not floating, not
    finite, or whose LoRA shape disagrees with the config's rank or (given `base_shapes`) with
    the base module it adapts; None when all are sound."""
    with weights.open("rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        blob = memoryview(fh.read())
    data = blob[n:]
    for key, meta in sorted(header.items()):
        if key == "__metadata__":
            continue
        start, end = (int(x) for x in meta["data_offsets"])
        problem = tensor_problem(data[start:end], meta)
        if problem is None:
            problem = shape_problem(key, meta, rank=rank, rank_pattern=rank_pattern, base_shapes=base_shapes)
        if problem is not None:
            return key, problem
    return None


def shape_problem(
    key: str,
    meta: dict[str, Any],
    *,
    rank: int,
    rank_pattern: dict[str, Any],
    base_shapes: dict[str, tuple[int, ...]] | None,
) -> str | None:
    match = _LORA_KEY.match(key)
    if match is None or "lora_embedding" in key:
        return None
    shape = tuple(int(d) for d in meta.get("shape", ()))
    module, ab = match["module"], match["ab"]
    r = _rank_of(module, rank, rank_pattern)
    if len(shape) != 2:
        return f"has shape {list(shape)}; a LoRA {ab} matrix has two dimensions"
    if (ab == "A" and shape[0] != r) or (ab == "B" and shape[1] != r):
        return f"has shape {list(shape)}, which is not rank {r} as adapter_config.json says"
    if base_shapes is not None:
        base = base_shapes.get(module)
        if base is None or len(base) != 2:
            return f"adapts {module}, which is not a linear layer of the base model"
        out_features, in_features = base
        want = (r, in_features) if ab == "A" else (out_features, r)
        if shape != want:
            return f"has shape {list(shape)}; the base model's {module} needs {list(want)}"
    return None
