"""Scorer of the house-style behaviour (used by `ragtune eval behaviour` and bench/training.py).

`score(output, expected)` returns per-criterion scores in [0, 1]; "behaviour" is the headline:
- an in-domain question: the reply cites a source that exists ([n] with 1 <= n <= sources shown),
  does not refuse, and ends with the fixed closing line;
- an out-of-domain question: the reply is exactly the refusal sentence.
"citation" (the right passage cited) and "fact" (the answer sentence's fact present) are
stricter diagnostics of whether the model used the context well.
"""

from __future__ import annotations

import re

CLOSING = "— Northwind Rail Help Desk"
REFUSAL = "I can only help with questions about Northwind Rail services."


def score(output: str, expected: dict) -> dict[str, float]:
    text = output.strip()
    if expected["kind"] == "refuse":
        ok = float(text == REFUSAL)
        return {"behaviour": ok, "citation": ok, "fact": ok}
    cites = [int(n) for n in re.findall(r"\[(\d+)\]", text)]
    cites_valid = bool(cites) and all(1 <= n <= expected["n_sources"] for n in cites)
    behaviour = cites_valid and REFUSAL not in text and text.endswith(CLOSING)
    fact = expected["fact"].lower().rstrip(".") in text.lower()
    return {
        "behaviour": float(behaviour),
        "citation": float(cites == [expected["cite"]]),
        "fact": float(fact),
    }
