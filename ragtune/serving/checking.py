"""Checked grounding: the model answers freely, and each sentence of its reply is sent once it is
whole and checked against the sources (`CheckedReply`): kept when the sources it cites hold its
names and numbers, its marker set right when another source holds them; the first claim none
holds ends the reply, and a reply with nothing held is the abstention. For a model that reads
its sources, a quotation caps the answer (the sentence nearest the question is often not the one
with the answer); the check keeps what it invents out instead (bench/results/checked.md).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache

from ragtune.core.prompt import ABSTAIN, SENTENCE_END, cite, is_abstention
from ragtune.serving.grounding import WORD, term_tokenizer

_MARKER = re.compile(r"\s*\[(\d{1,3})\]")
# Checked grounding: the share of an answer's own terms (those not in the question) that its
# cited sources must hold when it names and counts nothing; its names and numbers they must hold
# all of (bench/results/checked.md).
SUPPORT = 0.7
# How answers speak of their sources ("According to [1]", "as the passage states", "This can be
# found in source [1]."): not claims.
_CITING = (
    "according source sources passage passages text document documents context information "
    "provided given stated states mentioned mentions described found seen based refer refers "
    "first second third fourth fifth number numbered can this also see shown shows confirm "
    "confirmed indicated indicates"
)


@lru_cache(maxsize=1)
def _citing() -> frozenset[str]:
    return frozenset(term_tokenizer().terms(_CITING))


def names_of(text: str) -> list[str]:
    """The words of `text` that name or count: with a digit, or capitalised where a sentence
    does not start."""
    out = []
    for sentence in SENTENCE_END.split(text):
        words = WORD.findall(sentence)
        out += [w for i, w in enumerate(words) if any(c.isdigit() for c in w) or (i and w[0].isupper())]
    return out


def checked_reply(reply: str, question: str, context_texts: Sequence[str]) -> str:
    """A whole free reply as checked grounding sends it (`CheckedReply`)."""
    check = CheckedReply(question, context_texts)
    return check.feed(reply) + check.close()


class CheckedReply:
    """Checked grounding's check of one free reply, sentence by sentence as it is generated:
    `feed` takes the reply's new text and returns what may be sent of it now, `close` the rest
    once the reply is whole.

    A sentence's own terms are the store's (stemmed, stopwords out) that are neither the
    question's nor how answers speak of sources ("according to [1]", "this can be found in");
    its names and numbers (words with a digit, or capitalised inside a sentence) are its claim
    where it has any. A claim is sent once the sources it cites hold every name and number in
    it (a memorised answer is held by none) and the question's names it repeats where a source
    has them (a source about something else holds none: `_about`), its marker set to the one
    source that does when it cites the wrong one; the words around the names may paraphrase the
    question ("was written by") in words no source uses. The first claim no source holds, or the
    model saying it cannot answer, ends the reply there (with its opening clause, up to a comma,
    where a source holds that: "... was Buzz Aldrin [1]." of "... was Buzz Aldrin, who stepped
    out on July 20, 1969.").
    Sentences before the first held claim wait for it; a reply that never names anything must
    have SUPPORT of its own terms in its sources, judged once whole. A reply that cites none of
    the sources holding it ends with their markers; one with nothing held is the abstention."""

    def __init__(self, question: str, context_texts: Sequence[str]):
        self.tokenizer = term_tokenizer()
        self.asked = set(self.tokenizer.terms(question))
        self.held = [set(self.tokenizer.terms(text)) for text in context_texts]
        self.named_anywhere: set[str] = set().union(*self.held)
        self.raw = ""  # the reply as generated so far
        self.at = 0  # where its first sentence not yet judged starts
        self.space = ""  # what separates that sentence from the one before
        self.waiting: list[str] = []  # sentences before the first held claim (each with its space)
        self.used: list[int] = []  # the source holding each claim sent
        self.holders: set[int] = set()  # every source holding one of them
        self.ended = False  # a claim no source holds, or the model's abstention, ended it
        self.sent = ""
        self.verbatim = True  # whether all sent so far is the reply's own text

    def feed(self, text: str) -> str:
        """What may be sent now, `text` added to the reply."""
        self.raw += text
        out = ""
        for end in SENTENCE_END.finditer(self.raw, self.at):
            out += self._judge(self.raw[self.at : end.start()])
            self.at, self.space = end.end(), self.raw[end.start() : end.end()]
        return self._send(out)

    def close(self) -> str:
        """The rest, once the reply is whole."""
        out = self._judge(self.raw[self.at :]) if self.raw[self.at :].strip() else ""
        self.at = len(self.raw)
        if not self.used:
            out += self._nameless()
        if not self.used:
            return self._send(ABSTAIN)
        if not self._markers(self.sent + out):  # it cites none: the sources that hold it
            self.verbatim = False
            out += "".join(f" [{n}]" for n in dict.fromkeys(self.used))
        return self._send(out)

    def _send(self, text: str) -> str:
        if not self.sent:
            text = text.lstrip()
        self.sent += text
        return text

    def _markers(self, sentence: str) -> list[int]:
        return [int(n) for n in _MARKER.findall(sentence) if 1 <= int(n) <= len(self.held)]

    def _own(self, body: str) -> set[str]:
        return set(self.tokenizer.query_terms(body)) - self.asked - self.tokenizer.stopwords - _citing()

    def _holds(self, sources: Sequence[int], own: set[str], named: set[str], about: set[str]) -> bool:
        terms = set().union(*(self.held[n - 1] for n in sources))
        return (named | about) <= terms and (bool(named) or len(own & terms) >= SUPPORT * len(own))

    def _about(self, body: str) -> set[str]:
        """The question's names a sentence repeats (what its claim is about: "Denmark" in "The
        capital of Denmark is Copenhagen") that some source names: the source holding the claim
        must name them too, or it is a source about something else ("Copenhagen is the capital
        of Kenya"). A name no source has does not count: a source may speak of its subject
        without naming it ("... finished the novel in 1948")."""
        names = set(self.tokenizer.terms(" ".join(names_of(body)))) & self.asked
        return names & self.named_anywhere - self.tokenizer.stopwords

    def _source(self, sentence: str, own: set[str], named: set[str]) -> tuple[int | None, bool]:
        """The source holding a claim, and whether the claim's own markers say so (False also
        when it has none)."""
        cited = self._markers(sentence)
        about = self._about(_MARKER.sub("", sentence)) if named else set()
        if cited and self._holds(cited, own, named, about):
            return next(n for n in cited if named & self.held[n - 1] or not named), True
        best = max(range(1, len(self.held) + 1), key=lambda n: len(own & self.held[n - 1]), default=0)
        return (best if best and self._holds([best], own, named, about) else None), False

    def _judge(self, sentence: str) -> str:
        """What may be sent once `sentence` (whole) is judged."""
        space, self.space = self.space, ""
        body = _MARKER.sub("", sentence).strip()
        if self.ended or not body and not _MARKER.search(sentence):
            return ""
        if is_abstention(body):
            self.ended = True
            return ""
        own = self._own(body)
        named = set(self.tokenizer.terms(" ".join(names_of(body)))) & own
        if not named:  # no name or number: no claim of its own; sent with one
            if not self.used:
                self.waiting.append(space + sentence)
                return ""
            return space + self._cites(sentence)
        source, as_cited = self._source(sentence, own, named)
        if source is None:
            self.ended = True
            return self._clause(sentence, space)
        out = "".join(self.waiting) + space
        self.waiting = []
        self._use(source, own, named)
        if as_cited or not _MARKER.search(sentence):
            return out + sentence
        self.verbatim = False  # it cites a source that does not hold it
        return out + cite(body, source)

    def _use(self, source: int, own: set[str], named: set[str]) -> None:
        self.used.append(source)
        self.holders |= {
            source,
            *(n for n in range(1, len(self.held) + 1) if self._holds([n], own, named, set())),
        }

    def _clause(self, sentence: str, space: str) -> str:
        """Of a sentence whose claim no source holds, its longest opening clause (up to a comma)
        that makes a claim a source holds, with that source's marker: "... was Buzz Aldrin [1]."
        of "... was Buzz Aldrin, who stepped out on July 20, 1969." when no source has the date."""
        body = _MARKER.sub("", sentence)
        for cut in reversed([m.start() for m in re.finditer(r",\s", body)]):
            clause = body[:cut].strip()
            own = self._own(clause)
            named = set(self.tokenizer.terms(" ".join(names_of(clause)))) & own
            source = self._source(clause, own, named)[0] if named else None
            if source is not None:
                out = "".join(self.waiting) + space + cite(clause, source)
                self.waiting, self.verbatim = [], False
                self._use(source, own, named)
                return out
        return ""

    def _cites(self, sentence: str) -> str:
        """A sentence without a claim, its markers set to the last claim's source where they name
        no source holding a claim sent."""
        if all(n in self.holders for n in self._markers(sentence)) and len(self._markers(sentence)) == len(
            _MARKER.findall(sentence)
        ):
            return sentence
        self.verbatim = False
        return _MARKER.sub(f" [{self.used[-1]}]", sentence)

    def _nameless(self) -> str:
        """A reply that names and counts nothing, judged whole: SUPPORT of its own terms in the
        sources it cites, or in the one source that holds most of them."""
        text = "".join(self.waiting)
        body = _MARKER.sub("", text).strip()
        own = self._own(body)
        if self.ended or not own:
            return ""
        source, as_cited = self._source(text, own, set())
        if source is None:
            return ""
        self._use(source, own, set())
        if as_cited or not _MARKER.search(text):
            return text
        self.verbatim = False
        return cite(body, source)
