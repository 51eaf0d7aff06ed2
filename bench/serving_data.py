"""Inputs of the serving benchmark: questions, a 10k-chunk corpus, and LoRA adapters.

Questions and chunk text come from DisflQA (`--dataset`, BEIR layout) when it is there, else
from a seeded synthetic generator, so the benchmark also runs in a fresh clone. Every request of
a run gets a question of its own: vLLM's prefix cache would otherwise serve a repeated prompt
from cache and flatter whichever server saw it second.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9])")
_WORDS = [
    "aircraft",
    "wing",
    "pressure",
    "flow",
    "boundary",
    "layer",
    "shock",
    "wave",
    "heat",
    "transfer",
    "velocity",
    "turbulence",
    "river",
    "city",
    "empire",
    "treaty",
    "election",
    "century",
    "museum",
    "protein",
    "cell",
    "energy",
    "orbit",
    "signal",
    "network",
    "market",
    "policy",
    "harbour",
    "festival",
    "language",
    "mountain",
    "railway",
    "climate",
    "library",
    "theorem",
]


class Questions:
    """Hands out each question once, in order; `take` is deterministic for a given dataset."""

    def __init__(self, texts: list[str]):
        self._texts = texts
        self._next = 0

    def take(self, n: int) -> list[str]:
        if self._next + n > len(self._texts):
            raise ValueError(f"the run needs more than the {len(self._texts)} questions available")
        out = self._texts[self._next : self._next + n]
        self._next += n
        return out

    def sub(self, offset: int) -> Questions:
        """A fresh hand-out starting at `offset`: both servers get the same questions per phase."""
        return Questions(self._texts[offset:])


def load_questions(dataset: Path | None, *, limit: int = 8000) -> tuple[Questions, str]:
    path = dataset / "queries.jsonl" if dataset else None
    if path is not None and path.exists():
        with path.open() as fh:
            texts = [json.loads(line)["text"] for _, line in zip(range(limit), fh, strict=False)]
        return Questions(texts), f"DisflQA questions ({path})"
    rng = random.Random(1)
    texts = [f"What is known about the {' '.join(rng.sample(_WORDS, 3))} ({i})?" for i in range(limit)]
    return Questions(texts), "synthetic questions (seeded word lists)"


def _windows(sentences: list[str], *, max_words: int) -> list[str]:
    out = []
    for size in (3, 2, 4):
        for start in range(0, max(len(sentences) - size + 1, 0)):
            text = " ".join(sentences[start : start + size])
            if 15 <= len(text.split()) <= max_words:
                out.append(text)
    return out


def make_chunks(dataset: Path | None, n: int, *, max_words: int = 120) -> tuple[list[dict[str, Any]], str]:
    """`n` distinct documents short enough to be one chunk each (<= ~160 MiniLM tokens)."""
    path = dataset / "corpus.jsonl" if dataset else None
    per_paragraph: list[tuple[str, list[str]]] = []
    if path is not None and path.exists():
        with path.open() as fh:
            for line in fh:
                row = json.loads(line)
                per_paragraph.append(
                    (row["_id"], _windows(_SENTENCE_END.split(row["text"]), max_words=max_words))
                )
        what = (
            f"synthetic from real text: windows of 2-4 consecutive sentences of the "
            f"{len(per_paragraph)} DisflQA (SQuAD) paragraphs ({path}), one chunk per document"
        )
    else:
        rng = random.Random(2)
        for p in range(2000):
            sents = [
                f"The {' '.join(rng.sample(_WORDS, 5))} was recorded in {1800 + rng.randrange(220)}."
                for _ in range(8)
            ]
            per_paragraph.append((f"p{p}", _windows(sents, max_words=max_words)))
        what = "fully synthetic sentences (seeded word lists), one chunk per document"
    docs: list[dict[str, Any]] = []
    seen: set[str] = set()
    depth = 0
    while len(docs) < n and depth < 64:  # round-robin over paragraphs, one window each pass
        added = False
        for pid, windows in per_paragraph:
            if depth < len(windows) and windows[depth] not in seen and len(docs) < n:
                seen.add(windows[depth])
                docs.append({"id": f"{pid}-w{depth}", "text": windows[depth], "title": f"Paragraph {pid}"})
                added = True
        depth += 1
        if not added:
            break
    if len(docs) < n:
        raise ValueError(f"only {len(docs)} distinct chunks could be made from {path}; asked for {n}")
    return docs, what


def make_adapters(base: Path, dest: Path, names: list[str], *, rank: int = 8) -> list[Path]:
    """Rank-`rank` LoRA adapters with random non-zero weights (as tests/conftest.py makes them)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from ragtune.core.models import model_fingerprint

    fingerprint = model_fingerprint(base)
    out = []
    for seed, name in enumerate(names, start=1):
        folder = dest / name
        if (folder / "adapter_model.safetensors").exists():
            out.append(folder)
            continue
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        config = LoraConfig(
            r=rank, lora_alpha=2 * rank, target_modules=["q_proj", "v_proj"], init_lora_weights=False
        )
        get_peft_model(model, config).save_pretrained(folder)
        manifest = {
            "name": name,
            "base_model": str(base),
            "base_model_name": base.name,
            "base_fingerprint": fingerprint,
            "rank": rank,
            "alpha": 2 * rank,
            "target_modules": ["q_proj", "v_proj"],
            "context_format_version": 1,
        }
        (folder / "ragtune-adapter.json").write_text(json.dumps(manifest))
        out.append(folder)
    return out
