"""Adapter folders: the static check that `ragtune adapters validate` and the server share.

An adapter folder (adapters/NAME/) holds the PEFT files (`adapter_config.json`,
`adapter_model.safetensors`), the manifest `ragtune-adapter.json` and `training-config.yaml`.
`inspect_adapter` reads the small files, the safetensors header and every tensor (with numpy, no
torch): a NaN, infinite, integer or wrongly shaped weight must never reach the engine, where
one bad adapter silently empties every answer on every model (issue 10).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ragtune.core.errors import RagtuneError
from ragtune.core.models import check_model_dir, model_fingerprint
from ragtune.core.weights import base_module_names, base_weight_shapes, first_problem, read_safetensors_header

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


class BaseModelMismatch(AdapterError):
    """The adapter was trained for another base model: unavailable with this one, not broken."""

    code = "adapter_base_mismatch"


@dataclass(frozen=True)
class Unavailable:
    """An adapter listed but not servable with the current base model, and why."""

    reason: str
    trained_on: str | None


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
    fingerprint: str = ""  # of the adapter's own config and weights (adapter_fingerprint)


def check_tensors(
    name: str,
    weights: Path,
    header: dict[str, Any],
    *,
    rank: int,
    rank_pattern: dict[str, Any],
    base_shapes: dict[str, tuple[int, ...]] | None,
) -> None:
    """Read every tensor of `weights`: floating, finite, and LoRA shapes that agree with the
    config's rank and (given `base_shapes`) with the base module each one adapts."""
    found = first_problem(weights, header, rank=rank, rank_pattern=rank_pattern, base_shapes=base_shapes)
    if found is not None:
        key, problem = found
        raise AdapterError(
            f"adapter '{name}': tensor {key} {problem}; the adapter is damaged or its training "
            "diverged: retrain it (the engine never saw it)"
        )


def _inside(root: Path, files: list[Path], name: str) -> None:
    """Each file, links followed, must lie inside `root` (a link must not read other files)."""
    top = root.resolve()
    for f in files:
        real = f.resolve()
        if top not in real.parents:
            raise AdapterError(
                f"adapter '{name}': {f.name} resolves to {real}, outside {top}; copy the file into "
                "the adapter folder instead of linking to it"
            )


def _targets_present(targets: list[str] | str, modules: set[str]) -> list[str]:
    """Target entries that match no module of the base (PEFT: a list matches name suffixes,
    a string is a regular expression over full names)."""
    if isinstance(targets, str):
        return [] if any(re.fullmatch(targets, m) for m in modules) else [targets]
    return [t for t in targets if not any(m == t or m.endswith("." + t) for m in modules)]


def inspect_adapter(
    path: Path, *, base_model_path: Path, max_lora_rank: int, root: Path | None = None
) -> AdapterInfo:
    """Check that `path` is a LoRA adapter vLLM can load on `base_model_path`, every weight
    included; raise AdapterError naming the problem and its fix otherwise. Every file must
    resolve inside `root` (default: the folder that holds the adapter)."""
    return _inspect(path, base_model_path, max_lora_rank, root=root)


def _inspect(
    path: Path, base_model_path: Path | None, max_lora_rank: int, *, root: Path | None = None
) -> AdapterInfo:
    """inspect_adapter; with no base, the checks against the base model are left out."""
    name = path.name
    cfg = _read_config(path, root=root)
    rank = _check_ranks(name, cfg, max_lora_rank)
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
    manifest, base_name, base_fp = _check_base(path, cfg, base_model_path)
    try:
        check_tensors(
            name,
            weights,
            header,
            rank=rank,
            rank_pattern=cfg.get("rank_pattern") or {},
            base_shapes=base_weight_shapes(base_model_path) if base_model_path is not None else None,
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise AdapterError(
            f"adapter '{name}': {weights} is unreadable or corrupt ({exc}); retrain it"
        ) from None

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
        fingerprint=adapter_fingerprint(path),
    )


def _read_config(path: Path, *, root: Path | None) -> dict[str, Any]:
    """The folder's PEFT config, once the folder is a LoRA adapter vLLM can serve at all: every
    file inside `root`, a readable config, LoRA, no whole modules replaced."""
    name = path.name
    if not path.is_dir():
        raise AdapterError(f"adapter '{name}': folder {path} does not exist (train it with ragtune train)")
    cfg_path = path / PEFT_CONFIG
    if not cfg_path.is_file():
        raise AdapterError(f"adapter '{name}': {PEFT_CONFIG} is missing from {path}; not a PEFT adapter")
    _inside(root or path.resolve().parent, [p for p in path.iterdir() if p.is_file()], name)
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
    return cfg


def _check_ranks(name: str, cfg: dict[str, Any], max_lora_rank: int) -> int:
    """The adapter's rank `r`, once it and every rank_pattern rank are ones vLLM and this
    server's max_lora_rank take."""
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
    return rank


def _check_base(
    path: Path, cfg: dict[str, Any], base_model_path: Path | None
) -> tuple[dict | None, str | None, str | None]:
    """The manifest and the base the adapter was trained on (name, fingerprint), once that base
    is `base_model_path` (when given) and holds every target module. The base is checked
    before the adapter's modules and shapes: an adapter of another base is unavailable here
    (BaseModelMismatch), not damaged."""
    name = path.name
    if base_model_path is not None:
        problem = check_model_dir(base_model_path)
        if problem is not None:
            raise AdapterError(f"adapter '{name}': its base model is unusable: {problem}")
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
    if base_model_path is None:
        return manifest, base_name, base_fp
    if manifest is not None:
        actual = model_fingerprint(base_model_path)
        if base_fp != actual:
            raise BaseModelMismatch(
                f"adapter '{name}' was trained on base model '{base_name}' (fingerprint {base_fp}); "
                f"the server's base {base_model_path.name} has fingerprint {actual}; "
                "serve it with its own base or retrain it on this one"
            )
    elif cfg.get("base_model_name_or_path"):
        base_name = Path(str(cfg["base_model_name_or_path"])).name
        if base_name != base_model_path.name:
            raise BaseModelMismatch(
                f"adapter '{name}' declares base model '{base_name}' but the server's base is "
                f"'{base_model_path.name}'; serve it with its own base or retrain it"
            )
    try:
        missing = _targets_present(cfg.get("target_modules") or [], base_module_names(base_model_path))
    except (OSError, ValueError) as exc:
        raise AdapterError(f"adapter '{name}': cannot read the base model's weights ({exc})") from None
    if missing:
        raise BaseModelMismatch(
            f"adapter '{name}': target modules {missing} do not exist in the base model "
            f"{base_model_path.name}; it was trained for another architecture"
        )
    return manifest, base_name, base_fp


def adapter_fingerprint(path: Path) -> str:
    """A short id of an adapter folder's content (its config and weights, byte for byte): two
    folders with the same fingerprint serve the same adapter, whatever their names or paths."""
    h = hashlib.sha256()
    for f in (path / PEFT_CONFIG, path / WEIGHTS):
        h.update(f.name.encode() + b"\0")
        with f.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]


def list_adapters(
    adapters_dir: Path, *, base_model_path: Path | None = None, max_lora_rank: int = 512
) -> list[tuple[str, AdapterInfo | Unavailable | str]]:
    """Every adapter folder (hidden ones, like temp folders and .runs, skipped): its info, or
    `Unavailable` when it was trained for another base model, or its problem.

    With `base_model_path` the checks against the base model run too (as in inspect_adapter).
    """
    if not adapters_dir.is_dir():
        return []
    out: list[tuple[str, AdapterInfo | Unavailable | str]] = []
    for path in sorted(p for p in adapters_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        try:
            out.append((path.name, _inspect(path, base_model_path, max_lora_rank)))
        except BaseModelMismatch as exc:
            out.append((path.name, Unavailable(exc.message, _trained_on(path))))
        except AdapterError as exc:
            out.append((path.name, exc.message))
    return out


def _trained_on(path: Path) -> str | None:
    """The base model an adapter names: its manifest's, else its PEFT config's."""
    for file, key in ((MANIFEST, "base_model_name"), (PEFT_CONFIG, "base_model_name_or_path")):
        try:
            value = json.loads((path / file).read_text()).get(key)
        except (OSError, ValueError, AttributeError):
            continue
        if value:
            return Path(str(value)).name
    return None
