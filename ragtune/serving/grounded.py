"""What grounding holds one request's answer to, from its `rag` and its model's profile.

serving.grounding has the pieces (the relevance floor's ranking, strict grounding's vocabulary,
extractive grounding's grammars); this module decides, per request, which of them the engine is
handed: the abstention alone when no run of the sources comes within the relevance floor
(`min_similarity`) of the question; else, for strict grounding, the tokens the answer may use;
for extractive grounding, the grammar of its quotations (by default after a short probe of the
model's own opening, unless the profile's `model_abstains` is false, and a ranking of what it
may quote). Nothing for free decoding above the floor.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, fields
from typing import Any

from ragtune.retrieval.embedder import Embedder
from ragtune.serving.grounding import (
    QUOTE_LEAD,
    QUOTES,
    Grounding,
    Ranked,
    allowed_token_ids,
    choice_grammar,
    extractive_grammar,
    rank_quotations,
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
    """The grounding one request runs under: its mode (request, then profile) and the profile's
    calibration, defaults filled in."""

    grounding: Grounding = "free"
    floor: float = 0.0
    quotes: int = QUOTES
    model_abstains: bool = True
    quote_lead: float = QUOTE_LEAD
    quote_window: float = math.inf

    @property
    def constrains(self) -> bool:
        """Whether anything holds the reply: free decoding without a floor has nothing to build."""
        return self.grounding != "free" or bool(self.floor)

    @classmethod
    def of(cls, rag: RagOptions | bool | None, target: Target) -> GroundingAsked:
        """Each field from the request, else the profile, else the default above (`floor` is
        the option `min_similarity`)."""
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
        opens_with_abstention: Callable[[], Awaitable[bool]],
    ) -> dict[str, Any]:
        """SamplingOptions fields; `opens_with_abstention` runs the model's free opening (the
        probe) and is called only where extractive grounding asks the model."""
        ranked: Ranked | None = None
        if asked.floor or (asked.grounding == "extractive" and asked.quotes and texts):
            # A quotation the reply's token budget cannot hold would end cut, without its marker.
            budget = max_tokens or self.max_model_len - len(prompt_ids)

            def fits(answer: str) -> bool:
                return self.count_tokens(answer) < budget  # and the end of the turn

            ranked = await asyncio.to_thread(
                rank_quotations, query, texts, embedder, k=max(asked.quotes, 1), fits=fits
            )
            if ranked.off_topic(asked.floor):
                return {"grammar": choice_grammar([])}
        if asked.grounding == "free":
            return {}
        if asked.grounding == "extractive":
            if ranked is None or not asked.quotes:
                return {"grammar": await asyncio.to_thread(extractive_grammar, texts)}
            if not ranked.quotes or (asked.model_abstains and await opens_with_abstention()):
                return {"grammar": choice_grammar([])}
            # A clear lead is quoted as ranked; a close call is the model's to make, among the close.
            lead = ranked.lead > asked.quote_lead
            offered = ranked.quotes[:1] if lead else ranked.close(asked.quote_window)
            return {"grammar": choice_grammar(offered, abstain=False)}
        allowed = await asyncio.to_thread(allowed_token_ids, self.tokenizer, prompt_ids, texts)
        return {"allowed_token_ids": tuple(allowed)}
