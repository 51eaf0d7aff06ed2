"""What grounding holds one request's answer to, from its `rag` and its model's profile.

serving.grounding has the pieces (the relevance floor's ranking, strict grounding's vocabulary,
extractive grounding's ranked quotations, checked grounding's check); this module decides, per
request, which of them the engine is handed: the abstention alone when no run of the sources
(nor any source whole) comes within the relevance floor (`min_similarity`) of the question;
else, for strict grounding, the tokens the answer may use; for extractive grounding, the grammar
of the quotations it may choose from. Nothing for free decoding above the floor; checked
grounding's check runs on the reply as it is generated, a sentence at a time (`Checked`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

from ragtune.retrieval.embedder import Embedder
from ragtune.serving.checking import CheckedReply
from ragtune.serving.engine import Delta
from ragtune.serving.grounding import (
    QUOTE_LEAD,
    QUOTE_WINDOW,
    QUOTES,
    Grounding,
    Ranked,
    allowed_token_ids,
    choice_grammar,
    rank_quotations,
    unnamed,
)
from ragtune.serving.protocol import RagOptions
from ragtune.serving.resolve import Target


def option(rag: RagOptions | bool | None, target: Target, name: str, default: Any) -> Any:
    """A retrieval or grounding option: the request's (`rag.<name>`, where the request may set
    it), else the model's profile's, else `default`."""
    for source in (rag if isinstance(rag, RagOptions) else None, target.profile):
        value = getattr(source, name, None)
        if value is not None:
            return value
    return default


@dataclass(frozen=True)
class GroundingAsked:
    """The grounding one request runs under: its mode and relevance floor (each from the
    request, else the profile, else the default here)."""

    grounding: Grounding = "free"
    floor: float = 0.0  # the option `min_similarity`

    @classmethod
    def of(cls, rag: RagOptions | bool | None, target: Target) -> GroundingAsked:
        return cls(
            **{
                f.name: option(rag, target, "min_similarity" if f.name == "floor" else f.name, f.default)
                for f in fields(cls)
            }
        )


class Grounder:
    """Builds the engine's constraint for one request; tokenising, building and ranking run in
    a thread, like the prompt."""

    def __init__(self, tokenizer: Any, count_tokens: Callable[[str], int], max_model_len: int):
        self.tokenizer = tokenizer
        self.count_tokens = count_tokens
        self.max_model_len = max_model_len

    async def constraint(
        self,
        asked: GroundingAsked,
        *,
        query: str,
        texts: list[str],
        embedder: Embedder,
        prompt_ids: list[int],
        max_tokens: int | None,
    ) -> dict[str, Any]:
        """SamplingOptions fields."""
        ranked: Ranked | None = None
        if asked.floor or (asked.grounding == "extractive" and texts):
            # A quotation the reply's token budget cannot hold would end cut, without its marker.
            budget = max_tokens or self.max_model_len - len(prompt_ids)

            def fits(answer: str) -> bool:
                return self.count_tokens(answer) < budget  # and the end of the turn

            ranked = await asyncio.to_thread(rank_quotations, query, texts, embedder, k=QUOTES, fits=fits)
            if ranked.off_topic(asked.floor):
                return {"grammar": choice_grammar([])}
        if asked.grounding in ("free", "checked"):  # checked: after generation (Checked)
            return {}
        if asked.grounding == "extractive":
            # A quotation says yes or no only of what its source names.
            if ranked is None or not ranked.quotes or unnamed(query, texts):
                return {"grammar": choice_grammar([])}
            # A clear lead is quoted as ranked; a close call is the model's to make, among the close.
            offered = ranked.quotes[:1] if ranked.lead > QUOTE_LEAD else ranked.close(QUOTE_WINDOW)
            return {"grammar": choice_grammar(offered, abstain=False)}
        allowed = await asyncio.to_thread(allowed_token_ids, self.tokenizer, prompt_ids, texts)
        return {"allowed_token_ids": tuple(allowed)}


class Checked:
    """Checked grounding's hold on one request's replies: each choice's text is checked sentence
    by sentence as it comes (serving.checking.CheckedReply) and sent from its first claim the
    sources hold; a choice ends where the check ends it (the caller stops generating once every
    choice has: `done`), else where the model does. Logprobs come with the text while it is the
    model's own; a reply the check changes loses the rest of them (they were for the words it
    had)."""

    def __init__(self, question: str, texts: list[str], choices: int = 1):
        self.question = question
        self.texts = texts
        self.choices = choices
        self.replies: dict[int, CheckedReply] = {}
        self.held: dict[int, list[Delta]] = {}
        self.ended: set[int] = set()

    @property
    def done(self) -> bool:
        """Whether every choice has ended."""
        return len(self.ended) == self.choices

    def add(self, delta: Delta) -> Delta | None:
        """What may be sent of `delta`'s choice now, ending it where the model or the check
        does; None when nothing may be sent yet."""
        if delta.index in self.ended:
            return None
        check = self.replies.setdefault(delta.index, CheckedReply(self.question, self.texts))
        parts = self.held.setdefault(delta.index, [])
        parts.append(delta)
        text = check.feed(delta.text)
        finish = delta.finish_reason or ("stop" if check.ended else None)
        if finish is not None:
            text += check.close()
            self.ended.add(delta.index)
        elif not text:
            return None
        del self.held[delta.index]
        return Delta(
            delta.index,
            text,
            sum(d.tokens for d in parts),
            finish,
            tuple(lp for d in parts for lp in d.logprobs) if check.verbatim else (),
            next((d.cached_tokens for d in parts if d.cached_tokens is not None), None),
        )
