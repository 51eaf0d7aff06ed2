"""Strict grounding: an answer made only of words the prompt already holds.

A small model given sources often answers from what it memorised instead (a knowledge
conflict: the document says one thing, its weights another). With `grounding: strict` the engine
may only emit tokens that occur in the prompt (the sources, the question, the instructions) or
in a short fixed list (citation markers, digits, punctuation, the abstention sentence): a name
or number that is in no source cannot be generated. It does not make the model read better;
it removes the tokens of the answers it would invent. `bench/results/grounding.md` measures it.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any, Literal

from core.prompt import ABSTAIN

Grounding = Literal["free", "strict"]

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
