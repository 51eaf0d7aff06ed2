"""Greedy replies from a transformers (+ PEFT) model: the held-out samples printed after a
training run, and `ragtune eval behaviour` (evaluation.behaviour), both in-process with no engine."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def generate(
    model: Any,
    tokenizer: Any,
    conversations: list[list[dict[str, str]]],
    *,
    max_new_tokens: int = 96,
    batch_size: int = 8,
    on_batch: Callable[[int], None] | None = None,
) -> list[str]:
    """Greedy replies, batched by prompt length (left padding), in the input order."""
    import torch

    texts = [
        tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in conversations
    ]
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out: list[str] = [""] * len(texts)
    tokenizer.padding_side = "left"
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        enc = tokenizer([texts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.inference_mode():
            gen = model.generate(
                **enc,
                do_sample=False,
                use_cache=True,  # a model fresh from training has use_cache off in its config
                max_new_tokens=max_new_tokens,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
        for i, row in zip(idx, gen[:, enc["input_ids"].shape[1] :], strict=True):
            out[i] = tokenizer.decode(row, skip_special_tokens=True).strip()
        if on_batch:
            on_batch(len(idx))
    return out
