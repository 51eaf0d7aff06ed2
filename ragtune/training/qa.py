"""Question-answering data sets: loading, the passage split, answers in text and counterfactuals.

A QA set is in BEIR layout (`corpus.jsonl`, `queries.jsonl`, `qrels/test.tsv`) whose queries
carry an `answer` string (SQuAD style: a span of the gold passage). Shared by the reader-data
builder (`training.reader`) and `ragtune eval qa`, so that both agree on which passages are
held out, when a text holds an answer and how a counterfactual passage is made.

- **Split by passage**: a passage is held out when a hash of its id says so. Every question of a
  held-out passage is held out with it, so no evaluation passage is ever trained on.
- **Counterfactual**: the gold passage's answer span is replaced by another answer of the same
  type (a year by a year, a name by a name) taken from other questions; a model that follows the
  document answers with the substitute, one that answers from memory does not.
- **Answers in text**: SQuAD's normalisation (lower case, no punctuation or articles) and
  containment of the gold answer, which tell whether a passage holds it (and judge a reply in
  evaluation.qa_score, beside token F1, abstention and citations).
- **Unanswerable questions** (SQuAD 2.0's: the gold passage is on the topic but does not answer):
  a query with `"answerable": false`, or whose answer is `unknown` (`NO_ANSWER`, BIG-bench's
  disfl_qa marks them so) when its gold passage does not hold that word. The right reply is the
  abstention; they are scored apart from the answerable ones.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import string
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ragtune.core.errors import RagtuneError
from ragtune.core.prompt import ABSTAIN as ABSTAIN  # defined with the prompt layout it answers
from ragtune.core.prompt import SENTENCE_END as SENTENCE_END

HELD_OUT_FRACTION = 0.25  # passages held out for evaluation (by hash of the passage id)
SPLIT_SALT = "ragtune-qa-split-v1"

_NO_PUNCTUATION = str.maketrans("", "", string.punctuation)
_PUNCTUATION_AS_SPACE = str.maketrans(string.punctuation, " " * len(string.punctuation))
# The answer a SQuAD 2.0-derived set gives a question its passage does not answer.
NO_ANSWER = "unknown"
_MONTHS = [
    "january",
    "february",
    "march",
    "april",
    "may",
    "june",
    "july",
    "august",
    "september",
    "october",
    "november",
    "december",
]


class QADataError(RagtuneError):
    code = "invalid_qa_dataset"


@dataclass(frozen=True)
class Passage:
    id: str
    text: str
    title: str = ""


@dataclass(frozen=True)
class Question:
    id: str
    text: str
    answer: str
    doc_id: str
    answerable: bool = True


@dataclass
class QASet:
    name: str
    passages: dict[str, Passage]
    questions: list[Question]
    extra: dict[str, dict] = field(default_factory=dict)  # per question id: other query fields


def write_qa_set(dest: Path, passages: Iterable[dict], questions: Iterable[tuple[dict, str]]) -> None:
    """Write a QA set in the BEIR layout `load_qa_set` reads: passages (`_id`, `title`, `text`)
    and questions (`_id`, `text`, `answer`, any other fields), each with its passage's id."""
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "qrels").mkdir(exist_ok=True)
    questions = list(questions)
    lines = [json.dumps(p, ensure_ascii=False) for p in passages]
    (dest / "corpus.jsonl").write_text("".join(f"{line}\n" for line in lines))
    lines = [json.dumps(q, ensure_ascii=False) for q, _ in questions]
    (dest / "queries.jsonl").write_text("".join(f"{line}\n" for line in lines))
    rels = "".join(f"{q['_id']}\t{doc_id}\t1\n" for q, doc_id in questions)
    (dest / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + rels)


def load_qa_set(path: Path) -> QASet:
    """Load and check a BEIR-layout QA set; every problem is a QADataError naming the file."""
    path = Path(path)
    if not path.is_dir():
        raise QADataError(f"{path}: no such folder (a BEIR-layout data set with answers)", param="dataset")
    corpus, queries, qrels = path / "corpus.jsonl", path / "queries.jsonl", path / "qrels" / "test.tsv"
    for f in (corpus, queries, qrels):
        if not f.is_file():
            raise QADataError(
                f"{path} is not a BEIR data set: {f.relative_to(path)} is missing", param="dataset"
            )
    passages = {}
    for n, line in enumerate(corpus.read_text().splitlines(), 1):
        if line.strip():
            try:
                row = json.loads(line)
                passages[str(row["_id"])] = Passage(str(row["_id"]), row["text"], row.get("title") or "")
            except (ValueError, KeyError, TypeError) as exc:
                raise QADataError(f"{corpus} line {n}: {exc}", param="dataset") from None
    gold: dict[str, str] = {}
    for line in qrels.read_text().splitlines()[1:]:
        parts = line.split("\t")
        if len(parts) >= 3 and parts[2].strip() not in ("", "0"):
            gold.setdefault(parts[0], parts[1])
    questions, extra, missing = [], {}, 0
    for n, line in enumerate(queries.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            qid = str(row["_id"])
        except (ValueError, KeyError, TypeError) as exc:
            raise QADataError(f"{queries} line {n}: {exc}", param="dataset") from None
        answer = row.get("answer")
        unanswerable = row.get("answerable") is False
        if not unanswerable and (not isinstance(answer, str) or not answer.strip()):
            missing += 1
            continue
        answer = answer.strip() if isinstance(answer, str) else ""
        doc = gold.get(qid)
        if doc is None or doc not in passages:
            continue
        if normalize(answer) == NO_ANSWER and not contains(passages[doc].text, answer):
            unanswerable = True
        questions.append(Question(qid, row["text"], answer, doc, answerable=not unanswerable))
        extra[qid] = {k: v for k, v in row.items() if k not in ("_id", "text", "answer")}
    if not questions:
        raise QADataError(
            f"{queries}: no query carries an `answer` with a gold passage in qrels/test.tsv "
            f"({missing} without an answer); `ragtune eval qa` needs answers",
            param="dataset",
        )
    return QASet(path.name, passages, questions, extra)


def is_held_out(passage_id: str, fraction: float = HELD_OUT_FRACTION) -> bool:
    digest = hashlib.sha256(f"{SPLIT_SALT}:{passage_id}".encode()).digest()
    return int.from_bytes(digest[:4], "big") / 2**32 < fraction


def split_questions(qa: QASet, split: str) -> list[Question]:
    """Questions of the `train` or `heldout` passages, interleaved by passage (round robin).

    The interleaving makes any prefix (`--limit N`) cover as many passages as it can.
    """
    if split not in ("train", "heldout", "all"):
        raise QADataError(f"split must be train, heldout or all, got {split!r}", param="split")
    by_doc: dict[str, list[Question]] = defaultdict(list)
    for q in qa.questions:
        if split == "all" or is_held_out(q.doc_id) == (split == "heldout"):
            by_doc[q.doc_id].append(q)
    order, rank = [], 0
    while True:
        layer = [qs[rank] for qs in by_doc.values() if rank < len(qs)]
        if not layer:
            return order
        order += layer
        rank += 1


# -- answers in text -----------------------------------------------------------------------------


def normalize(text: str, *, spaced: bool = False) -> str:
    """SQuAD's answer normalisation (`spaced`: punctuation read as a space, not dropped)."""
    text = text.lower()
    text = text.translate(_PUNCTUATION_AS_SPACE if spaced else _NO_PUNCTUATION)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def contains(prediction: str, answer: str) -> bool:
    """Whether the normalised answer is in the normalised prediction, with punctuation dropped
    (SQuAD's rule) or read as a space: text stored tokenised ("two - thirds", "Kublai Khan ' s",
    as in DisflQA's passages) would otherwise never hold an answer written plainly
    ("two-thirds"), even in a verbatim quotation."""
    for spaced in (False, True):
        gold = normalize(answer, spaced=spaced)
        if gold and f" {gold} " in f" {normalize(prediction, spaced=spaced)} ":
            return True
    return False


# -- answer sentences and counterfactuals --------------------------------------------------------


def find_answer(text: str, answer: str) -> int:
    """Character offset of the answer in `text` (case-insensitive fallback), -1 when absent."""
    at = text.find(answer)
    return at if at >= 0 else text.lower().find(answer.lower())


def answer_sentence(text: str, answer: str, *, max_words: int = 40) -> str | None:
    """The sentence of `text` that holds `answer`, cut to a window around it when very long."""
    at = find_answer(text, answer)
    if at < 0:
        return None
    bounds, start = [], 0
    for m in SENTENCE_END.finditer(text):
        bounds.append((start, m.start()))
        start = m.end()
    bounds.append((start, len(text)))
    i = next(k for k, (s, e) in enumerate(bounds) if s <= at < e or k == len(bounds) - 1)
    s, e = bounds[i]
    # Short fragments ("U .", "S .") come from split abbreviations: join the neighbours.
    while len(text[s:e].split()) < 8 and (i + 1 < len(bounds) or s > 0):
        if i + 1 < len(bounds):
            i += 1
            e = bounds[i][1]
        else:
            s = 0
    if at + len(answer) > e:
        e = min(len(text), at + len(answer))
    sentence = text[s:e].strip()
    words = sentence.split()
    if len(words) > max_words:
        lead = len(text[s:at].split())
        span = len(answer.split())
        lo = max(0, lead - (max_words - span) // 2)
        sentence = " ".join(words[lo : lo + max_words])
    return sentence.rstrip(" .")


def answer_type(answer: str) -> str:
    a = answer.strip()
    low = a.lower()
    if re.fullmatch(r"(1[0-9]|20)\d\d", a):
        return "year"
    if any(m in low.split() for m in _MONTHS):
        return "date"
    if re.search(r"\d", a):
        return "number"
    words = [w for w in a.split() if w[:1].isalpha()]
    if words and all(w[0].isupper() for w in words):
        return "name"
    return "phrase"


def substitute_pool(questions: Iterable[Question]) -> dict[str, list[str]]:
    """Answers grouped by type, each once: where counterfactual substitutes come from."""
    pool: dict[str, list[str]] = defaultdict(list)
    seen = set()
    for q in questions:
        key = normalize(q.answer)
        if key and key not in seen and len(q.answer) <= 60:
            seen.add(key)
            pool[answer_type(q.answer)].append(q.answer)
    return pool


def pick_substitute(
    answer: str, passage_text: str, pool: dict[str, list[str]], rng: random.Random
) -> str | None:
    """Another answer of the same type, absent from the passage, of similar length; one of the
    same shape when there is one ("12 minutes" for "20 minutes", not "4 credits")."""
    candidates = pool.get(answer_type(answer), [])
    same_shape = [c for c in candidates if _shape(c) == _shape(answer) and normalize(c) != normalize(answer)]
    if same_shape:
        candidates = same_shape
    if not candidates:
        return None
    n_words = len(answer.split())
    low_text = normalize(passage_text)
    for _ in range(40):
        other = rng.choice(candidates)
        if (
            normalize(other) != normalize(answer)
            and abs(len(other.split()) - n_words) <= 1
            and f" {normalize(other)} " not in f" {low_text} "
            and normalize(answer) not in normalize(other)
        ):
            return other
    return None


def _shape(answer: str) -> str:
    return re.sub(r"\d+", "#", answer.lower())


def substitute(text: str, answer: str, replacement: str) -> str:
    """`text` with every occurrence of `answer` (case-insensitive) replaced."""
    return re.sub(re.escape(answer), lambda _: replacement, text, flags=re.IGNORECASE)


@dataclass(frozen=True)
class Counterfactual:
    question: Question
    substitute: str


def counterfactuals(
    qa: QASet, questions: Sequence[Question], *, seed: int = 0, per_passage: int = 3
) -> tuple[dict[str, str], list[Counterfactual]]:
    """Counterfactual passage texts and the questions they change.

    Up to `per_passage` questions of a passage get their answers replaced in one new text, when
    their answers do not overlap one another: by the question's own `substitute` where the set
    gives one (a field of queries.jsonl), else by another answer of the same type. Returns
    {passage id: new text} and the changed questions with their substitutes.
    """
    rng = random.Random(seed)
    pool = substitute_pool(qa.questions)
    by_doc: dict[str, list[Question]] = defaultdict(list)
    for q in questions:
        by_doc[q.doc_id].append(q)
    texts: dict[str, str] = {}
    changed: list[Counterfactual] = []
    for doc_id, qs in by_doc.items():
        text = qa.passages[doc_id].text
        taken: list[str] = []
        for q in qs:
            if len(taken) >= per_passage or not q.answerable or find_answer(text, q.answer) < 0:
                continue
            key = normalize(q.answer)
            if any(key in normalize(t) or normalize(t) in key for t in taken):
                continue
            named = qa.extra.get(q.id, {}).get("substitute")  # a set may name each question's rival
            other = named or pick_substitute(q.answer, qa.passages[doc_id].text, pool, rng)
            if other is None or any(normalize(other) in normalize(t) for t in taken):
                continue
            text = substitute(text, q.answer, other)
            taken.append(q.answer)
            changed.append(Counterfactual(q, other))
        if taken:
            texts[doc_id] = text
    return texts, changed
