"""Behaviour evaluation: generate on held-out prompts with the base and with an adapter, then score.

A held-out file is JSONL, one {"messages": [...prompt turns...], "expected": {...}} a line; a
scorer is a Python file defining `score(output: str, expected: dict) -> dict[str, float]` (by
default `score.py` beside the data). Generation is greedy, in-process with transformers + PEFT
(the adapter switched off for the base run), so it needs no engine.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable
from contextlib import nullcontext
from functools import partial
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress

from ragtune.training.data import DataError
from ragtune.training.generate import generate

Scorer = Callable[[str, dict], dict[str, float]]


def load_scorer(path: Path) -> Scorer:
    if not path.is_file():
        raise DataError(
            f"scorer {path} does not exist; pass --scorer FILE.py defining score(output, expected)"
        )
    spec = importlib.util.spec_from_file_location(f"ragtune_scorer_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    fn = getattr(module, "score", None)
    if not callable(fn):
        raise DataError(f"scorer {path} defines no function score(output, expected)")
    return fn


def load_heldout(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise DataError(f"held-out data {path} does not exist")
    rows, problems = [], []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row.get("messages"), list) or not row["messages"]:
                raise ValueError("'messages' is missing or empty")
            if not isinstance(row.get("expected"), dict):
                raise ValueError("'expected' (what the scorer checks) is missing")
        except (ValueError, AttributeError) as exc:
            problems.append(f"{path.name} line {n}: {exc}")
            continue
        rows.append(row)
    if problems:
        raise DataError("invalid held-out data:\n  " + "\n  ".join(problems[:20]))
    if not rows:
        raise DataError(f"{path} holds no examples")
    return rows


def summarize(scores: list[dict[str, float]]) -> dict[str, float]:
    keys = sorted({k for s in scores for k in s})
    return {k: round(sum(s.get(k, 0.0) for s in scores) / len(scores), 4) for k in keys}


def eval_behaviour(
    data: Path,
    *,
    base_model: Path,
    adapter: Path | None,
    scorer: Path | None = None,
    max_new_tokens: int = 96,
    batch_size: int = 8,
    limit: int | None = None,
    console: Console | None = None,
) -> dict[str, Any]:
    """Score the base model and (when given) the adapter on `data`; returns means and samples."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ragtune.core.cpu import cpu_has_bf16

    console = console or Console(stderr=True)
    rows = load_heldout(data)[:limit]
    score_fn = load_scorer(scorer or data.parent / "score.py")
    tokenizer = AutoTokenizer.from_pretrained(base_model)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" or cpu_has_bf16() else torch.float32
    model: Any = AutoModelForCausalLM.from_pretrained(base_model, dtype=dtype)
    model = model.to(device).eval()
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter)).eval()
    prompts = [r["messages"] for r in rows]
    results: dict[str, Any] = {"examples": len(rows), "data": str(data)}
    runs = [("base", None)] + ([("adapter", adapter)] if adapter is not None else [])
    with Progress(console=console) as bar:
        for label, _ in runs:
            task = bar.add_task(f"generating ({label})", total=len(rows))
            # The base model's turn runs with the adapter switched off, on the same weights.
            off = model.disable_adapter() if label == "base" and adapter is not None else nullcontext()
            with off:
                outputs = generate(
                    model,
                    tokenizer,
                    prompts,
                    max_new_tokens=max_new_tokens,
                    batch_size=batch_size,
                    on_batch=partial(bar.advance, task),
                )
            scores = [score_fn(o, r["expected"]) for o, r in zip(outputs, rows, strict=True)]
            results[label] = summarize(scores)
            results[f"{label}_samples"] = [
                {"output": o, "expected": r["expected"], "score": s}
                for o, r, s in zip(outputs[:5], rows[:5], scores[:5], strict=True)
            ]
    return results
