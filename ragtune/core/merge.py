"""One adapter merged into the base weights, and the LoRA corrections that serve the rest exactly.

A merged domain runs with no LoRA at all, at the base model's speed. The engine's weights are then
W + dA (dA = scale_A * B_A @ A_A), so anything else it serves needs a correction:

- the base model: W = (W + dA) - dA, a LoRA whose B is -scale_A * B_A ("the negation");
- another adapter X: W + dX = (W + dA) - dA + dX, a LoRA of rank r_A + r_X whose A stacks
  [A_A; A_X] and whose B sets [-scale_A * B_A, scale_X * B_X] side by side.

Both are exact in real arithmetic; each scale is folded into B so the new adapter's own scale is
1 (lora_alpha = r). Every folder is written beside its final name and renamed into place, keyed
by the adapters' fingerprints, so a second start reuses it and an interrupted one leaves nothing.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ragtune.core.adapters import WEIGHTS, AdapterError, AdapterInfo

MANIFEST = "ragtune-merge.json"
_CONFIG = "adapter_config.json"
# Files of the base folder a served model needs besides its weights (tokenizer, chat template).
_BASE_FILES = re.compile(
    r"(tokenizer.*|special_tokens_map\.json|vocab\.json|merges\.txt|.*\.jinja|generation_config\.json)"
)
_LORA_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<side>[AB])\.weight$")


def _scale(cfg: dict[str, Any], module: str, rank: int) -> float:
    alpha = float(
        (cfg.get("alpha_pattern") or {}).get(module.rsplit(".", 1)[-1], cfg.get("lora_alpha") or rank)
    )
    return alpha / math.sqrt(rank) if cfg.get("use_rslora") else alpha / rank


def _lora_pairs(folder: Path) -> tuple[dict[str, Any], dict[str, tuple[Any, Any]]]:
    """An adapter's config and its (A, B) float32 tensors by module, each B times its scale."""
    from safetensors.torch import load_file

    cfg = json.loads((folder / _CONFIG).read_text())
    tensors = load_file(str(folder / WEIGHTS))
    sides: dict[str, dict[str, Any]] = {}
    for key, tensor in tensors.items():
        found = _LORA_KEY.match(key)
        if found is None:
            raise AdapterError(
                f"adapter '{folder.name}': {key} is not a LoRA A/B weight; only LoRA on linear "
                "layers can be merged for serving"
            )
        sides.setdefault(found["module"], {})[found["side"]] = tensor.float()
    pairs = {}
    for module, ab in sides.items():
        a, b = ab["A"], ab["B"]
        pairs[module] = (a, b * _scale(cfg, module, a.shape[0]))
    return cfg, pairs


def _write_lora(folder: Path, pairs: dict[str, tuple[Any, Any]], like: dict[str, Any], dtype: Any) -> None:
    """A PEFT LoRA folder with scale 1 and one rank for every module (zero rows pad smaller ones)."""
    import torch
    from safetensors.torch import save_file

    rank = max(a.shape[0] for a, _ in pairs.values())
    tensors = {}
    for module, (a, b) in pairs.items():
        pad = rank - a.shape[0]
        if pad:
            a = torch.cat([a, a.new_zeros(pad, a.shape[1])])
            b = torch.cat([b, b.new_zeros(b.shape[0], pad)], dim=1)
        tensors[f"{module}.lora_A.weight"] = a.to(dtype).contiguous()
        tensors[f"{module}.lora_B.weight"] = b.to(dtype).contiguous()
    save_file(tensors, str(folder / WEIGHTS), metadata={"format": "pt"})
    targets = sorted({m.rsplit(".", 1)[-1] for m in pairs})
    cfg = {k: v for k, v in like.items() if k not in ("rank_pattern", "alpha_pattern", "use_rslora")}
    cfg |= {
        "r": rank,
        "lora_alpha": rank,
        "use_rslora": False,
        "target_modules": targets,
        "lora_dropout": 0.0,
    }
    (folder / _CONFIG).write_text(json.dumps(cfg, indent=2) + "\n")


def _atomic(final: Path, build: Callable[[Path], None]) -> Path:
    """`final`, built by `build` into a sibling temp folder and renamed into place (once)."""
    if (final / MANIFEST).is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        build(work)
        if final.exists():  # an earlier folder without its manifest: never finished
            shutil.rmtree(final)
        work.rename(final)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return final


def merged_folder(root: Path, adapter: AdapterInfo) -> Path:
    """Where the base model with `adapter` merged in is kept (one folder per adapter content)."""
    return root / f"{adapter.name}-{adapter.fingerprint[:12]}"


def merge_adapter(base: Path, adapter: AdapterInfo, root: Path) -> Path:
    """The base model folder with `adapter` merged into its weights (PEFT's merge_and_unload, in
    float32, saved in the base's own dtype), with the base's tokenizer files and a manifest."""

    def build(work: Path) -> None:
        import torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        config = json.loads((base / "config.json").read_text())
        saved_dtype = getattr(torch, config.get("dtype") or config.get("torch_dtype") or "float32")
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        merged = PeftModel.from_pretrained(model, adapter.path).merge_and_unload()
        merged.to(saved_dtype).save_pretrained(work, safe_serialization=True)
        for file in base.iterdir():
            if file.is_file() and _BASE_FILES.fullmatch(file.name):
                shutil.copy2(file, work / file.name)
        manifest = {
            "adapter": adapter.name,
            "adapter_path": str(adapter.path),
            "adapter_fingerprint": adapter.fingerprint,
            "base_model_path": str(base),
            "base_model_name": adapter.base_model_name,
            "dtype": str(saved_dtype).removeprefix("torch."),
        }
        (work / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")

    return _atomic(merged_folder(root, adapter), build)


def correction(merged: Path, adapter: AdapterInfo, other: AdapterInfo | None) -> Path:
    """The LoRA that serves `other` (None: the base model) on an engine running `merged`, the
    base with `adapter` merged in: minus `adapter`, plus `other`. Kept inside the merged folder."""
    key = "base" if other is None else f"{other.name}-{other.fingerprint[:12]}"

    def build(work: Path) -> None:
        import torch

        cfg, pairs = _lora_pairs(adapter.path)
        out = {m: (a, -b) for m, (a, b) in pairs.items()}
        if other is not None:
            other_cfg, plus = _lora_pairs(other.path)
            for module in sorted(set(out) | set(plus)):
                parts = [p for p in (out.get(module), plus.get(module)) if p is not None]
                out[module] = (torch.cat([a for a, _ in parts]), torch.cat([b for _, b in parts], dim=1))
        _write_lora(work, out, cfg, torch.float32)  # the engine casts to its own dtype
        (work / MANIFEST).write_text(
            json.dumps({"minus": adapter.fingerprint, "plus": other.fingerprint if other else None}) + "\n"
        )

    return _atomic(merged / "corrections" / key, build)
