"""How `ragtune eval qa` scores its saved answers (evaluation.qa asks; this judges).

Per row (`score_row`): in the `answer` phase, for answerable questions, containment and token F1
of the gold answer, citation accuracy (the gold passage among `sources` and every `[n]` pointing
at it) and false abstentions (the answer was in a source shown); for unanswerable ones (the gold
passage is on the topic but does not answer), whether the reply abstains; the data set's own
behaviour score (`score.py`), else the reader's format. `counterfactual`: the substitute and not
the original. `abstain`: the abstention, unless another passage still holds the answer.
`summarize` averages them per configuration, with latency percentiles.
"""

from __future__ import annotations

import importlib.util
import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ragtune.core.prompt import is_abstention
from ragtune.training.qa import ABSTAIN, QASet, Question, contains, normalize


def token_f1(prediction: str, answer: str) -> float:
    pred, gold = normalize(prediction).split(), normalize(answer).split()
    common = Counter(pred) & Counter(gold)
    same = sum(common.values())
    if not pred or not gold or same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(gold)
    return 2 * precision * recall / (precision + recall)


def cited_numbers(text: str) -> list[int]:
    return [int(n) for n in re.findall(r"\[(\d{1,3})\]", text)]


def load_behaviour_scorer(dataset: Path) -> Callable[[str, dict], dict[str, float]] | None:
    """The dataset's own `score.py` (score(output, expected) -> {"behaviour": ...}), if it has one."""
    path = dataset / "score.py"
    if not path.is_file():
        return None
    spec = importlib.util.spec_from_file_location(f"ragtune_qa_scorer_{dataset.name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, "score", None)


def reader_behaviour(reply: str, n_sources: int) -> float:
    """The grounded reader's format: the abstention sentence, or a short answer citing real sources."""
    text = reply.strip()
    if text == ABSTAIN:
        return 1.0
    cites = cited_numbers(text)
    return float(bool(cites) and all(1 <= n <= n_sources for n in cites) and len(text.split()) <= 60)


def score_row(row: dict[str, Any], q: Question, extra: dict, scorer: Callable | None) -> dict[str, float]:
    reply, sources = row["reply"], row["sources"]
    cites = cited_numbers(reply)
    gold_at = [i + 1 for i, d in enumerate(sources) if d == q.doc_id]
    cite_ok = bool(gold_at) and bool(cites) and all(n in gold_at for n in cites)
    out: dict[str, float] = {}
    if row["phase"] == "answer":
        if not q.answerable:
            # The passage is on the topic but does not answer: the right reply is the abstention.
            out["unanswerable_abstain"] = float(is_abstention(reply))
        else:
            out["contains"] = float(contains(reply, q.answer))
            out["f1"] = token_f1(reply, q.answer)
        if row["rag"]:
            out["retrieved"] = float(bool(gold_at))
            if q.answerable:
                out["citation"] = float(cite_ok)
            # The answer's words were in a chunk shown (a gold passage's other chunk may not hold
            # them): abstaining here is a miss, not caution.
            if q.answerable and any(contains(t, q.answer) for t in row.get("source_texts", [])):
                out["false_abstain"] = float(is_abstention(reply))
        if scorer is not None:
            expected = {**extra, "answer": q.answer, "n_sources": len(sources)}
            expected.setdefault("cite", gold_at[0] if gold_at else None)
            out["behaviour"] = float(scorer(reply, expected).get("behaviour", 0.0))
        else:
            out["behaviour"] = reader_behaviour(reply, len(sources))
    elif row["phase"] == "counterfactual":
        out["grounded"] = float(contains(reply, row["substitute"]) and not contains(reply, q.answer))
        out["memory"] = float(contains(reply, q.answer))
    elif row["phase"] == "abstain":
        if q.answerable and any(contains(t, q.answer) for t in row.get("source_texts", [])):
            return {}  # another passage still answers it: abstaining would not be right
        out["abstain"] = float(is_abstention(reply))
    return out


def summarize(rows: list[dict[str, Any]], qa: QASet, scorer: Callable | None) -> dict[str, dict[str, Any]]:
    by_id = {q.id: q for q in qa.questions}
    table: dict[str, dict[str, Any]] = {}
    acc: dict[str, dict[str, list[float]]] = {}
    for row in rows:
        q = by_id[row["qid"]]
        scores = score_row(row, q, qa.extra.get(q.id, {}), scorer)
        bucket = acc.setdefault(row["config"], {})
        for k, v in scores.items():
            bucket.setdefault(k, []).append(v)
        if row["phase"] == "answer":
            bucket.setdefault("latency", []).append(row["latency_s"])
    for label, bucket in acc.items():
        lat = bucket.pop("latency", [])
        table[label] = {k: round(sum(v) / len(v), 4) for k, v in bucket.items() if v}
        counted = ("contains", "grounded", "abstain", "unanswerable_abstain")
        table[label].update({f"n_{k}": len(v) for k, v in bucket.items() if k in counted})
        p50, p99 = np.percentile(lat, [50, 99]).tolist() if lat else (None, None)
        table[label]["latency_p50_s"], table[label]["latency_p99_s"] = p50, p99
    return table
