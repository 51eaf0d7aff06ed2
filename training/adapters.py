"""Adapter folders: the static check that `ragtune adapters validate` and the server share.

An adapter folder (adapters/NAME/) holds the PEFT files (`adapter_config.json`,
`adapter_model.safetensors`), the manifest `ragtune-adapter.json` and `training-config.yaml`.
`inspect_adapter` reads only small files and the safetensors header (no torch, no weights), so
the server can call it on every load request.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from retrieval.errors import RagtuneError
from training.models import check_model_dir, model_fingerprint

MANIFEST = "ragtune-adapter.json"
CONFIG_FILE = "training-config.yaml"
PEFT_CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vLLM 0.32's supported max_lora_rank values
RUNS_DIR = ".runs"  # adapters/.runs/NAME/: checkpoints and metrics of a run in progress


class AdapterError(RagtuneError):
    """An adapter folder cannot be served; the message says what to fix."""

    status_code = 400
    error_type = "invalid_request_error"
    code = "invalid_adapter"


@dataclass(frozen=True)
class AdapterInfo:
    name: str
    path: Path
    rank: int
    alpha: int
    target_modules: list[str]
    base_model_name: str | None
    base_fingerprint: str | None
    manifest: dict | None


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


def base_module_names(base: Path) -> set[str]:
    """Dotted names of the base model's modules that own a weight (from safetensors headers)."""
    names: set[str] = set()
    for f in sorted(base.glob("*.safetensors")):
        for key in read_safetensors_header(f):
            if key.endswith(".weight"):
                names.add(key[: -len(".weight")])
    return names


def _targets_present(targets: list[str] | str, modules: set[str]) -> list[str]:
    """Target entries that match no module of the base (PEFT: a list matches name suffixes,
    a string is a regular expression over full names)."""
    if isinstance(targets, str):
        return [] if any(re.fullmatch(targets, m) for m in modules) else [targets]
    return [t for t in targets if not any(m == t or m.endswith("." + t) for m in modules)]


def inspect_adapter(path: Path, *, base_model_path: Path, max_lora_rank: int) -> AdapterInfo:
    """Check that `path` is a LoRA adapter vLLM can load on `base_model_path`; raise AdapterError
    naming the problem and its fix otherwise. Reads no weights."""
    return _inspect(path, base_model_path, max_lora_rank)


def _inspect(path: Path, base_model_path: Path | None, max_lora_rank: int) -> AdapterInfo:
    """inspect_adapter; with no base, the checks against the base model are left out."""
    name = path.name
    if not path.is_dir():
        raise AdapterError(f"adapter '{name}': folder {path} does not exist (train it with ragtune train)")
    cfg_path = path / PEFT_CONFIG
    if not cfg_path.is_file():
        raise AdapterError(f"adapter '{name}': {PEFT_CONFIG} is missing from {path}; not a PEFT adapter")
    try:
        cfg = json.loads(cfg_path.read_text())
        if not isinstance(cfg, dict):
            raise ValueError("not a JSON object")
    except (ValueError, UnicodeDecodeError) as exc:
        raise AdapterError(
            f"adapter '{name}': {cfg_path} is corrupt ({exc}); retrain or restore it"
        ) from None
    if str(cfg.get("peft_type", "")).upper() != "LORA":
        raise AdapterError(
            f"adapter '{name}': peft_type is {cfg.get('peft_type')!r}; only LoRA adapters can be served"
        )
    if cfg.get("modules_to_save"):
        raise AdapterError(
            f"adapter '{name}': modules_to_save={cfg['modules_to_save']} is set; vLLM cannot serve adapters "
            "that replace whole modules; retrain without modules_to_save"
        )
    rank = cfg.get("r")
    if not isinstance(rank, int) or rank < 1:
        raise AdapterError(f"adapter '{name}': adapter_config.json has no valid rank 'r' (got {rank!r})")
    ranks = [rank, *(v for v in (cfg.get("rank_pattern") or {}).values() if isinstance(v, int))]
    for r in ranks:
        if r not in VLLM_LORA_RANKS:
            raise AdapterError(
                f"adapter '{name}': rank {r} is not one vLLM supports {VLLM_LORA_RANKS}; "
                "retrain with --rank 8, 16, 32 or 64"
            )
        if r > max_lora_rank:
            raise AdapterError(
                f"adapter '{name}': rank {r} exceeds the server's max_lora_rank {max_lora_rank}; "
                f"raise RAGTUNE_ENGINE__MAX_LORA_RANK to {r} or retrain with a smaller --rank"
            )
    weights = path / WEIGHTS
    if not weights.is_file():
        raise AdapterError(f"adapter '{name}': {WEIGHTS} is missing from {path}; retrain it")
    try:
        header = read_safetensors_header(weights)
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise AdapterError(
            f"adapter '{name}': {weights} is unreadable or corrupt ({exc}); retrain it"
        ) from None
    if not any("lora_A" in k for k in header) or not any("lora_B" in k for k in header):
        raise AdapterError(f"adapter '{name}': {weights} holds no lora_A/lora_B tensors; retrain it")

    targets = cfg.get("target_modules") or []
    if not targets:
        raise AdapterError(f"adapter '{name}': adapter_config.json lists no target_modules; retrain it")
    if base_model_path is not None:
        problem = check_model_dir(base_model_path)
        if problem is not None:
            raise AdapterError(f"adapter '{name}': its base model is unusable: {problem}")
        try:
            missing = _targets_present(targets, base_module_names(base_model_path))
        except (OSError, ValueError) as exc:
            raise AdapterError(f"adapter '{name}': cannot read the base model's weights ({exc})") from None
    else:
        missing = []
    if missing:
        raise AdapterError(
            f"adapter '{name}': target modules {missing} do not exist in the base model "
            f"{base_model_path.name}; it was trained for another architecture"
        )

    manifest = None
    manifest_path = path / MANIFEST
    if manifest_path.exists():
        try:
            manifest = json.loads(manifest_path.read_text())
            if not isinstance(manifest, dict):
                raise ValueError("not a JSON object")
        except (ValueError, UnicodeDecodeError) as exc:
            raise AdapterError(f"adapter '{name}': {manifest_path} is corrupt ({exc}); retrain it") from None
    base_name = manifest.get("base_model_name") if manifest else None
    base_fp = manifest.get("base_fingerprint") if manifest else None
    if base_model_path is not None and manifest is not None:
        actual = model_fingerprint(base_model_path)
        if base_fp != actual:
            raise AdapterError(
                f"adapter '{name}' was trained on base model '{base_name}' (fingerprint {base_fp}); "
                f"the server's base {base_model_path.name} has fingerprint {actual}; "
                "serve it with its own base or retrain it on this one"
            )
    elif base_model_path is not None:
        declared = cfg.get("base_model_name_or_path")
        if declared:
            base_name = Path(str(declared)).name
            if base_name != base_model_path.name:
                raise AdapterError(
                    f"adapter '{name}' declares base model '{base_name}' but the server's base is "
                    f"'{base_model_path.name}'; serve it with its own base or retrain it"
                )
    alpha = cfg.get("lora_alpha")
    return AdapterInfo(
        name=name,
        path=path,
        rank=rank,
        alpha=int(alpha) if isinstance(alpha, int | float) else rank,
        target_modules=sorted(targets) if isinstance(targets, list) else [targets],
        base_model_name=base_name,
        base_fingerprint=base_fp,
        manifest=manifest,
    )


def list_adapters(
    adapters_dir: Path, *, base_model_path: Path | None = None, max_lora_rank: int = 512
) -> list[tuple[str, AdapterInfo | str]]:
    """Every adapter folder (hidden ones, like temp folders and .runs, skipped): its info or problem.

    With `base_model_path` the checks against the base model run too (as in inspect_adapter).
    """
    if not adapters_dir.is_dir():
        return []
    out: list[tuple[str, AdapterInfo | str]] = []
    for path in sorted(p for p in adapters_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        try:
            out.append((path.name, _inspect(path, base_model_path, max_lora_rank)))
        except AdapterError as exc:
            out.append((path.name, exc.message))
    return out
