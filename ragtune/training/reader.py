"""Reader data: grounded-answer training examples from a QA set, in the server's prompt format.

The reader behaviour is: read the numbered sources, answer with the sentence that says it,
cite the source as [n], follow the source even where it contradicts what the model remembers,
and say ABSTAIN when no source answers. Each example is built RAFT-style (Zhang et al. 2024):

- the passages of the training split are indexed in a scratch collection with the same
  chunking and hybrid search the server uses, and each question's top hits from *other*
  passages are its distractors (realistic: same topic, often the same article);
- 2 to 4 chunks a prompt (varied, so a served top_k in that range looks familiar); the
  answering chunk is shown among them in a random place with probability `1 - p_absent`,
  and in a share `p_counterfactual` of those its answer span is replaced by another answer of
  the same type (training.qa.counterfactuals), so the target follows the document, not memory;
- the target is the chunk's sentence that holds the answer followed by its marker
  ("... [2]."), or ABSTAIN when the answering chunk is absent;
- in a share `p_short` of the examples every chunk is cut to a sentence or two (the answering
  one to the answer's sentence), as in collections of short notes: the reply is then the whole
  source and its marker, which a reader trained on paragraphs alone copies without the marker;
- prompts are laid out by `core.prompt.apply_context`, exactly as served.

Only passages of the `train` split are used: held-out passages (training.qa.is_held_out) are
never seen, not even as distractors.
"""

from __future__ import annotations

import json
import random
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ragtune.core.prompt import ContextChunk, apply_context, cite
from ragtune.training.qa import (
    ABSTAIN,
    SENTENCE_END,
    QASet,
    answer_sentence,
    counterfactuals,
    find_answer,
    split_questions,
    substitute,
)


@dataclass(frozen=True)
class ReaderMix:
    """How reader examples are drawn. The defaults are the one set `ragtune data reader`, this
    module and `make reader-adapter` share: the mix the shipped reader is trained on
    (abstentions and counterfactuals: bench/results/qa-disflqa-reader5.md; short sources:
    qa-reader7-short.md)."""

    top_k: int = 4  # most sources a prompt (the `grounded` profile serves 4)
    min_k: int = 2  # fewest sources a prompt
    p_absent: float = 0.15  # share without the answering source: the reply is ABSTAIN
    p_counterfactual: float = 0.35  # share whose answer span is substituted
    p_short: float = 0.25  # share whose sources are cut to a sentence or two
    seed: int = 0


READER_DEFAULTS = ReaderMix()


@dataclass
class ReaderStats:
    examples: int = 0
    answered: int = 0
    counterfactual: int = 0
    abstain: int = 0
    gold_not_retrieved: int = 0
    short: int = 0
    skipped: int = 0


def _window(text: str, answer: str, words: int = 120) -> str:
    """About `words` words of `text` around the answer (when the chunk itself was not retrieved)."""
    at = find_answer(text, answer)
    toks = text.split()
    if len(toks) <= words or at < 0:
        return text
    lead = len(text[:at].split())
    lo = max(0, min(lead - words // 2, len(toks) - words))
    return " ".join(toks[lo : lo + words])


def _lead(text: str, words: int = 40) -> str:
    """The first sentence or two of `text`, at most about `words` words: a short source."""
    parts = SENTENCE_END.split(text.strip())
    lead = parts[0]
    if len(lead.split()) < 12 and len(parts) > 1:
        lead = f"{lead} {parts[1]}"
    return " ".join(lead.split()[:words])


def build_reader_examples(
    qa: QASet,
    *,
    library: Any,
    n_examples: int,
    mix: ReaderMix = READER_DEFAULTS,
    collection_name: str = "reader-train",
    on_example: Callable[[], None] | None = None,
) -> tuple[list[dict[str, Any]], ReaderStats]:
    """Return chat examples ({"messages": [...]}) and what was built."""
    from ragtune.retrieval import Document

    rng = random.Random(mix.seed)
    train = split_questions(qa, "train")
    questions = [q for q in train if q.answerable and find_answer(qa.passages[q.doc_id].text, q.answer) >= 0]
    train_docs = {q.doc_id for q in train}
    coll = library.create(collection_name)
    coll.upsert(
        [
            Document(id=p.id, text=p.text, title=p.title or None)
            for p in qa.passages.values()
            if p.id in train_docs
        ]
    )
    picked = questions[:n_examples]
    _, cf_list = counterfactuals(qa, picked, seed=mix.seed)
    cf_of = {c.question.id: c.substitute for c in cf_list}
    stats = ReaderStats()
    out: list[dict[str, Any]] = []
    for q in picked:
        hits = coll.search(q.text, k=mix.top_k + 6, mode="hybrid")
        gold = next(
            (h for h in hits if h.document_id == q.doc_id and find_answer(h.text, q.answer) >= 0), None
        )
        if gold is None:
            stats.gold_not_retrieved += 1
        gold_text = gold.text if gold is not None else _window(qa.passages[q.doc_id].text, q.answer)
        title = (gold.title if gold is not None else qa.passages[q.doc_id].title) or None
        k = rng.randint(min(mix.min_k, mix.top_k), mix.top_k)  # varied, so any served top_k looks familiar
        others = [h for h in hits if h.document_id != q.doc_id][:k]
        short = mix.p_short > 0 and rng.random() < mix.p_short  # no draw at 0: the same examples as before
        if short:
            others = [replace(h, text=_lead(h.text)) for h in others]
        roll = rng.random()
        if roll < mix.p_absent:
            chunks = [ContextChunk(h.text, h.title) for h in others[:k]]
            rng.shuffle(chunks)
            target = ABSTAIN
            stats.abstain += 1
        else:
            answer = q.answer
            if roll < mix.p_absent + mix.p_counterfactual and q.id in cf_of:
                answer = cf_of[q.id]
                gold_text = substitute(gold_text, q.answer, answer)
                stats.counterfactual += 1
            sentence = answer_sentence(gold_text, answer)
            if sentence is None:
                stats.skipped += 1
                continue
            if short:
                gold_text = sentence
            chunks = [ContextChunk(h.text, h.title) for h in others[: k - 1]]
            at = rng.randrange(len(chunks) + 1)
            chunks.insert(at, ContextChunk(gold_text, title))
            target = cite(sentence, at + 1)
            stats.answered += 1
        messages = apply_context([{"role": "user", "content": q.text}], chunks)
        messages.append({"role": "assistant", "content": target})
        out.append({"messages": messages, "qid": q.id, "doc_id": q.doc_id})
        stats.examples += 1
        stats.short += short
        if on_example:
            on_example()
    return out, stats


def write_reader_data(
    dataset: Path,
    out: Path,
    *,
    settings: Any,
    n_examples: int,
    mix: ReaderMix = READER_DEFAULTS,
    on_example: Callable[[], None] | None = None,
) -> ReaderStats:
    """Build reader examples from the QA set at `dataset` and write them as JSONL to `out`."""
    from ragtune.retrieval import Library
    from ragtune.training.qa import load_qa_set

    qa = load_qa_set(dataset)
    with tempfile.TemporaryDirectory(prefix="ragtune-reader-") as scratch:
        # A scratch collection: on this machine, never in a shared PostgreSQL store.
        library = Library(Path(scratch), settings.model_copy(update={"store_url": None}))
        try:
            rows, stats = build_reader_examples(
                qa,
                library=library,
                n_examples=n_examples,
                mix=mix,
                on_example=on_example,
            )
        finally:
            library.close()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    tmp.replace(out)
    return stats
