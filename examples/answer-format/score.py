"""Scorer of the answer-format example (used by `ragtune eval behaviour`).

- "behaviour": the reply is exactly two lines, `ANSWER: ...` then `WHY: ...`;
- "correct": the expected answer appears anywhere in the reply (case-insensitive), so the base
  model's free-form replies and the adapter's formatted ones are judged alike: an adapter that
  keeps "correct" at the base model's level did not make its knowledge worse.
"""

from __future__ import annotations

import re

TEMPLATE = re.compile(r"ANSWER: [^\n]+\nWHY: [^\n]+")


def score(output: str, expected: dict) -> dict[str, float]:
    text = output.strip()
    return {
        "behaviour": float(bool(TEMPLATE.fullmatch(text))),
        "correct": float(expected["answer"].lower() in text.lower()),
    }
