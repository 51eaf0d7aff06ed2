"""Grounding: answers held to the sources, by constraining what the engine may generate.

A small model given sources often answers from what it memorised instead (a knowledge
conflict: the document says one thing, its weights another). With `grounding: strict` the engine
may only emit tokens that occur in the prompt (the sources, the question, the instructions) or
in a short fixed list (citation markers, digits, punctuation, the abstention sentence): a name
or number that is in no source cannot be generated. It does not make the model read better;
it removes the tokens of the answers it would invent. `bench/results/grounding.md` measures it.

With `grounding: extractive` the answer is a quotation: one or two consecutive sentences of one
source, word for word, closed by that source's marker ("... 12 minutes [2]."), or the abstention
sentence. It is the reader adapter's own answer form (training.reader), handed to vLLM as a
grammar (structured outputs), so a reply cannot misquote a source, cite the wrong number, or
leave the marker out. Which run it quotes is mostly the ranker's choice: every run of one or two
consecutive sentences is ranked against the question, the collection's embedder and BM25 fused
as hybrid retrieval fuses them (retrieval.fusion.convex). When the first leads the second by
more than `QUOTE_LEAD` standard deviations of the fused scores it alone is offered; else the
model chooses among the best `QUOTES` that stay within `QUOTE_WINDOW` of the first. The ranker
reads a disfluent or wordy question better than a small model choosing greedily, the model a
close call better ("What trains run on the Heron Line?": "... is worked by 4-car Pioneer
trains", which the ranker puts below "... runs between ... . Trains leave every 12 minutes").
Two sentences, because a sentence often needs the one before it to say what it is about. Runs
the reply's token budget cannot hold are left out, unless none fits: cut, they would lose their
marker. The model is never asked whether to abstain: measured, a small model's opening adds
little to the relevance floor and costs answers (bench/results/model-abstains.md); these
numbers were profile options once, and bench/results/checked.md says why they are not now.
A yes/no question with a term no source holds is the abstention too (`unnamed`): a quotation
says yes or no only of what its source names.

With `grounding: checked` the model answers freely and its reply is checked against the
sources sentence by sentence (serving.checking).

The relevance floor (`min_similarity`, any grounding; the `grounded` profile's is
`profile_floor`'s): when the sources are off the question's topic (`Ranked.off_topic`: no run
within the floor by the embedder's cosine, and none holding most of the question's terms), the
answer is the abstention, without asking the model. Measured, this tells "the answer is gone"
apart far better than a 135M model's own opening does (bench/results/floor.md).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any, Literal, NamedTuple

import numpy as np

from ragtune.core.prompt import ABSTAIN, SENTENCE_END, cite
from ragtune.retrieval.embedder import Embedder
from ragtune.retrieval.fusion import convex
from ragtune.retrieval.sparse import SparseIndex, Tokenizer, count

Grounding = Literal["free", "strict", "extractive", "checked"]

# Always allowed: enough to cite, to count, to punctuate, and to abstain.
_ALWAYS = " ".join(
    [ABSTAIN, *(f"[{n}]" for n in range(1, 21)), "0 1 2 3 4 5 6 7 8 9 . , ; : ! ? ' \" ( ) - %", "\n", "\n\n"]
)


@lru_cache(maxsize=4)
def _fixed_ids(tokenizer: Any) -> frozenset[int]:
    """`_ALWAYS` (at a line start and mid-sentence) and the special tokens: the same every request."""
    ids = set(tokenizer.all_special_ids)
    for text in (_ALWAYS, " " + _ALWAYS):
        ids.update(tokenizer.encode(text, add_special_tokens=False))
    return frozenset(ids)


def allowed_token_ids(tokenizer: Any, prompt_ids: Sequence[int], context_texts: Sequence[str]) -> list[int]:
    """Token ids a strictly grounded answer may use.

    The prompt's own ids, plus each source's words tokenised as they appear mid-sentence
    (" word": in the prompt a word that starts a line is tokenised without its space), plus
    `_ALWAYS` and the special tokens (end of turn), so the answer can always stop.
    """
    ids = set(prompt_ids) | _fixed_ids(tokenizer)
    words = " ".join(" ".join(text.split()) for text in context_texts)
    ids.update(tokenizer.encode(" " + words, add_special_tokens=False))
    return sorted(ids)


def _literal(text: str) -> str:
    """`text` as a string literal of vLLM's EBNF grammars (JSON escapes, UTF-8 kept)."""
    return json.dumps(text, ensure_ascii=False)


def sentences(text: str) -> list[str]:
    """A source's sentences, whitespace folded, as an extractive answer may quote them (not those
    of punctuation alone: quoted, they would leave nothing but the marker)."""
    return [s for s in SENTENCE_END.split(" ".join(text.split())) if any(c.isalnum() for c in s)]


# Extractive grounding's choice (see the module's docstring): the best QUOTES runs, of up to
# RANKED_RUN sentences; the first alone when it leads the second by more than QUOTE_LEAD standard
# deviations of the ranking's fused scores, else those within QUOTE_WINDOW of it
# (bench/results/quote-lead.md, quote-window.md).
QUOTES = 3
RANKED_RUN = 2
QUOTE_LEAD = 0.5
QUOTE_WINDOW = 0.5
# The `grounded` profile's relevance floor (`Ranked.off_topic`): Youden's J on the questions of
# DisflQA's training passages (`python -m bench.floor`, bench/results/floor.json). Under checked
# grounding the check abstains too where the answer is gone, so each answerable question the
# floor turns away costs more than the gone ones it catches: there the floor sits where that
# curve turns away half as many answerable questions (0.158 against 0.293 at 0.67; measured on
# five sets, bench/results/checked.md).
MIN_SIMILARITY = 0.67
CHECKED_MIN_SIMILARITY = 0.60


def profile_floor(grounding: Grounding) -> float:
    """The `grounded` profile's relevance floor under this grounding."""
    return CHECKED_MIN_SIMILARITY if grounding == "checked" else MIN_SIMILARITY


def quotations(context_texts: Sequence[str], *, max_sentences: int = RANKED_RUN) -> list[tuple[str, int]]:
    """Every run of 1 to `max_sentences` consecutive sentences of each source, as (text, n)."""
    out: list[tuple[str, int]] = []
    for n, text in enumerate(context_texts, start=1):
        parts = sentences(text)
        for i in range(len(parts)):
            out.extend(
                (" ".join(parts[i : i + k]), n) for k in range(1, min(max_sentences, len(parts) - i) + 1)
            )
    return out


class Ranked(NamedTuple):
    quotes: list[str]  # cited quotations, best first
    similarity: float  # the closest run's or whole source's cosine to the question; 0.0 when none
    coverage: float  # the largest share of the question's terms one run holds; 0.0 when none
    behind: tuple[float, ...] = ()  # each quotation's fused score below the first's (0.0 first)

    @property
    def lead(self) -> float:
        """How far the first quotation leads the second (inf: there is one at most)."""
        return self.behind[1] if len(self.behind) > 1 else math.inf

    def close(self, window: float) -> list[str]:
        """The quotations within `window` of the first, the first always (`quote_window`)."""
        return [q for q, gap in zip(self.quotes, self.behind, strict=True) if gap <= window]

    def off_topic(self, floor: float) -> bool:
        """Whether the sources are too far from the question to answer it (the relevance floor):
        no run nor whole source comes within `floor` of it by the embedder's cosine, and no run
        holds most of its terms. The second test guards the first: a source that contradicts what the embedder
        learnt ("Havana is the capital of France ...") is further by cosine (0.61 against Paris's
        0.85), never by its words."""
        return self.similarity < floor and self.coverage <= 0.5


@lru_cache(maxsize=1)
def term_tokenizer() -> Tokenizer:
    return Tokenizer()


def rank_quotations(
    question: str,
    context_texts: Sequence[str],
    embedder: Embedder,
    *,
    k: int,
    fits: Callable[[str], bool] | None = None,
) -> Ranked:
    """The `k` quotations of these sources closest to the question, cited ("... [n]."), best first,
    how close the sources come (the closest run's or whole source's cosine, and the largest share
    of the question's terms a run holds: the relevance floor's measures, `Ranked.off_topic`), and
    how far each quotation falls behind the first.

    Dense (the embedder's cosine) and BM25 (the store's tokenizer, the candidates as the corpus)
    rankings, fused by convex z-scores with hybrid retrieval's default weight (0.5, not tuned
    here or per collection).
    `fits` (a cited quotation -> whether the reply's token budget holds it) leaves out the runs
    that would be cut before their marker, unless none fits.
    """
    found = quotations(context_texts)
    if not found:
        return Ranked([], 0.0, 0.0)
    texts = [text for text, _ in found]
    query = embedder.embed_query(question)
    dense = embedder.embed(texts) @ query
    tokenizer = term_tokenizer()
    terms = tokenizer.query_terms(question)
    counted = count(tokenizer, np.arange(len(texts)), texts)
    asked = set(terms)
    held = np.bincount(counted.docs[[t in asked for t in counted.terms]], minlength=len(texts))
    # The floor's measures look at every run, and at each source whole: a source that names its
    # subject once and then says "it" is closer whole than any run of it (bench/results/floor.md).
    # The choice looks only at the runs the reply can hold.
    whole = embedder.embed(list(context_texts)) @ query
    similarity = float(max(dense.max(), whole.max()))
    coverage = float(held.max() / len(asked)) if asked else 1.0
    kept = [i for i in range(len(found)) if fits is None or fits(cite(*found[i]))] or list(range(len(found)))
    index = SparseIndex(tokenizer)
    all_kept = len(kept) == len(texts)  # the usual case: the terms counted above serve the index too
    index.add(counted if all_kept else count(tokenizer, np.arange(len(kept)), [texts[i] for i in kept]))
    sparse = index.search(terms, k=len(kept))
    fused = convex(list(enumerate(dense[kept].tolist())), sparse, 0.5)[:k]
    behind = tuple(fused[0][1] - score for _, score in fused)
    return Ranked([cite(*found[kept[j]]) for j, _ in fused], similarity, coverage, behind)


def choice_grammar(answers: Sequence[str], *, abstain: bool = True) -> str:
    """The grammar of a reply that is one of `answers` word for word (or the abstention)."""
    return "root ::= " + " | ".join(_literal(a) for a in [*([ABSTAIN] if abstain else []), *answers])


WORD = re.compile(r"[^\W_][\w'-]*")


# A yes/no question opens with an auxiliary ("Is there wifi on ...?", "Does ... run on Sundays?");
# the words of asking are not the thing asked about ("Can you tell me whether ...").
_AUXILIARIES = "is are was were am do does did can could shall should may might must will would has have had"
_POLAR = frozenset(_AUXILIARIES.split())
_ASKING = f"{_AUXILIARIES} any some me my we our us you your please tell know whether"


@lru_cache(maxsize=1)
def _asking() -> frozenset[str]:
    return frozenset(term_tokenizer().terms(_ASKING))


def polar(question: str) -> bool:
    """Whether a question asks yes or no: it opens with an auxiliary."""
    words = WORD.findall(question)
    return bool(words) and words[0].lower() in _POLAR


def unnamed(question: str, context_texts: Sequence[str]) -> list[str]:
    """A yes/no question's terms that no source holds (none for other questions). A quotation says
    yes or no only of what its source names: "Is there wifi on the Granite Line?" quoted "The
    Granite Line runs between Elm Terrace and Bramley [1]" answers nothing (bench/results/polar.md)."""
    if not polar(question):
        return []
    tokenizer = term_tokenizer()
    held = set(tokenizer.terms(" ".join(context_texts)))
    return [t for t in dict.fromkeys(tokenizer.query_terms(question)) if t not in held and t not in _asking()]
