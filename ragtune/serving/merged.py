"""`serve --merge ADAPTER`: one domain served from the base weights with its adapter merged in.

Its requests run with no LoRA, at the base model's speed. With LoRA on (the default) the base
model and every other adapter are still served, each through an exact LoRA correction against
the merged weights (core/merge.py); with LoRA off only the merged domain is.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace

from ragtune.core.adapters import VLLM_LORA_RANKS, inspect_adapter
from ragtune.core.errors import RagtuneError
from ragtune.core.merge import merge_adapter
from ragtune.serving.adapters import AdapterPathError, Merged, adapter_folder
from ragtune.serving.settings import EngineSettings, Settings

log = logging.getLogger("ragtune.serving")


class MergeError(RagtuneError):
    code = "invalid_merge"


def prepare(settings: Settings) -> Merged | None:
    """Build (or reuse) the merged model for `serving.merge`; None when nothing is merged."""
    name = settings.serving.merge
    if name is None:
        return None
    if settings.engine.url:
        raise MergeError(
            "serving.merge needs the engine ragtune starts: a remote engine at engine.url serves "
            "its own weights; drop --merge (or serving.merge)",
            param="merge",
        )
    root = settings.adapters_dir.resolve()
    try:
        folder = adapter_folder(root, settings.serving.adapters.get(name, name))
    except AdapterPathError as exc:
        raise MergeError(f"--merge {name!r}: {exc.message}", param="merge") from None
    if not folder.is_dir():
        raise MergeError(
            f"--merge {name!r}: no adapter folder {folder} under {root}; give an adapter's name "
            "(`ragtune adapters list`) or its folder under the adapters folder",
            param="merge",
        )
    info = inspect_adapter(
        folder, base_model_path=settings.base_model_path, max_lora_rank=max(VLLM_LORA_RANKS)
    )
    info = replace(info, name=name)
    started = time.monotonic()
    merged = merge_adapter(settings.base_model_path, info, settings.models_dir / "merged")
    log.info("adapter %s merged into %s: %s (%.1f s)", name, settings.base_model_path.name, merged,
             time.monotonic() - started)  # fmt: skip
    return Merged(info=info, folder=merged, lora=settings.engine.enable_lora)


def engine_settings(settings: EngineSettings, merged: Merged | None) -> EngineSettings:
    """With a merge, room for a correction: its rank is the merged adapter's plus the other's."""
    if merged is None or not settings.enable_lora:
        return settings
    need = merged.info.rank + settings.max_lora_rank
    rank = min((r for r in VLLM_LORA_RANKS if r >= need), default=max(VLLM_LORA_RANKS))
    return settings.model_copy(update={"max_lora_rank": rank})
