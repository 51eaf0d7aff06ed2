"""The replay of quotation rules on saved answers (bench/quote_window.py): which reply each rule
gives, and when that reply is only an estimate."""

from __future__ import annotations

from bench.quote_window import rules
from ragtune.serving.grounding import Ranked

QUOTES = ["opens at 5:15 [1].", "opens at 5:00 [2].", "runs between [3]."]
RANKED = Ranked(QUOTES, similarity=0.85, coverage=0.83, behind=(0.0, 0.1, 1.7))


def test_a_saved_reply_inside_the_window_stands_and_one_outside_is_replaced() -> None:
    window = rules([0.05, 0.5])
    assert window["as served"]("runs between [3].", RANKED) == ("runs between [3].", False)
    assert window["the ranker's first"]("runs between [3].", RANKED) == ("opens at 5:15 [1].", False)
    # Inside the window: a narrowed grammar keeps the path the model took, so the reply stands.
    assert window["window 0.5"]("opens at 5:00 [2].", RANKED) == ("opens at 5:00 [2].", False)
    # Outside, a window of one run: that run, exactly.
    assert window["window 0.05"]("runs between [3].", RANKED) == ("opens at 5:15 [1].", False)
    # Outside, a window of two: the model would choose between them, so the first is an estimate.
    assert window["window 0.5"]("runs between [3].", RANKED) == ("opens at 5:15 [1].", True)
