"""A GGUF file de-quantised into a Hugging Face folder (bf16 safetensors, tokenizer, chat
template) with transformers; core.models imports every model through here.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.metadata
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ragtune.core.errors import ModelError

Progress = Callable[[str], None]  # one line of what is happening now


def gguf_metadata(path: Path) -> dict[str, Any]:
    """Architecture, name, file type (quantisation) and license from a GGUF's header."""
    from gguf import GGUFReader, LlamaFileType

    try:
        reader = GGUFReader(path)
    except (ValueError, OSError) as exc:
        raise ModelError(f"{path.name} is not a readable GGUF file ({exc})") from None

    def field(key: str) -> Any:
        f = reader.fields.get(key)
        return None if f is None else f.contents()

    file_type = field("general.file_type")
    with contextlib.suppress(ValueError, TypeError):
        file_type = LlamaFileType(file_type).name
    return {
        "architecture": field("general.architecture"),
        "name": field("general.name"),
        "file_type": file_type,
        "quantization_version": field("general.quantization_version"),
        "license": field("general.license"),
        "tensors": len(reader.tensors),
    }


def _supported(architecture: str) -> bool:
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    # transformers' own renames of llama.cpp names (modeling_gguf_pytorch_utils.load_gguf_checkpoint)
    renamed = {
        "qwen2moe": "qwen2_moe",
        "qwen3moe": "qwen3_moe",
        "gpt-oss": "gpt_oss",
        "minimax-m2": "minimax_m2",
    }
    return (
        architecture in GGUF_SUPPORTED_ARCHITECTURES
        or renamed.get(architecture) in GGUF_SUPPORTED_ARCHITECTURES
    )


@contextlib.contextmanager
def _one_reader() -> Iterator[None]:
    """Parse each GGUF once. Workaround (transformers 5.19, gguf 0.19): the tokenizer, the model
    and the config each build their own GGUFReader, and parsing the header of a model with a
    152k-token vocabulary takes about 20 s here; the reader is read-only, so one is shared."""
    import gguf

    original = gguf.GGUFReader
    readers: dict[tuple[str, str], Any] = {}

    def shared(path: Any, mode: Any = "r") -> Any:
        key = (str(Path(path).resolve()), mode)
        if key not in readers:
            readers[key] = original(path, mode)
        return readers[key]

    gguf.GGUFReader = shared  # type: ignore[misc,assignment]
    try:
        yield
    finally:
        gguf.GGUFReader = original  # type: ignore[misc]


def dequantise(gguf: Path, tmp: Path, say: Progress) -> dict[str, Any]:
    """Write the GGUF's model into `tmp` as bf16 safetensors with its tokenizer; the provenance."""
    with _one_reader():
        meta = gguf_metadata(gguf)
        arch = str(meta["architecture"])
        if not _supported(arch):
            raise ModelError(
                f"{gguf.name}: GGUF architecture {arch!r} cannot be de-quantised by transformers "
                f"{_version('transformers')}; nothing was imported"
            )
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        say(f"de-quantising {meta['name'] or gguf.name} ({arch}, {meta['file_type']}) to bfloat16")
        try:
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            if not getattr(tokenizer, "chat_template", None):
                raise ModelError(f"{gguf.name} carries no chat template; ragtune serves chat models only")
            # float32 is the GGUF loader's fast path; the weights are cast to bf16 below.
            quantized = AutoModelForCausalLM.from_pretrained(
                gguf.parent, gguf_file=gguf.name, dtype=torch.float32
            )
        except (ValueError, KeyError, NotImplementedError) as exc:
            raise ModelError(
                f"{gguf.name}: transformers cannot load this GGUF ({exc}); nothing was imported"
            ) from None
    # The GGUF loader marks the model as quantized and save_pretrained then refuses
    # (transformers 5.x); a fresh model from a clean config takes the dense weights.
    config = copy.deepcopy(quantized.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.bfloat16
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.load_state_dict(quantized.state_dict())
    model.generation_config = quantized.generation_config
    del quantized
    say("saving bf16 safetensors and the tokenizer")
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    return {
        "dtype": "bfloat16",
        "provenance": {
            "gguf": {"size": gguf.stat().st_size},
            "gguf_metadata": meta,
            "license": meta["license"],
            "dtype": "bfloat16",
            "tools": {p: _version(p) for p in ("transformers", "gguf", "torch")},
        },
    }


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None
