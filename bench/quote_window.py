"""Replays who chooses a ranked quotation on the answers `ragtune eval qa --answers FILE` saved:
as served, the ranker's first always, or the model's choice kept inside a `quote_window`.

    .venv/bin/python -m bench.quote_window --dataset examples/disflqa \\
        --answers indexes/.eval/qa-disflqa.jsonl --config grounded+RAG [--window 0.25 --window 0.5]

Each saved quotation is ranked again from the sources it was given (serving.grounding.
rank_quotations, the collection's default embedder, 3 runs). Under a window the reply is the saved
one when that lies inside it (a grammar only narrowed keeps the greedy path it allowed, so this
is exact), else the window's first: exact when the window holds one run, an estimate otherwise
(counted as "estimated"). Scored as `ragtune eval qa` scores: answer ⊇ gold on the answerable
questions of the answer phase, grounded on the counterfactual phase; abstentions are left out
(no choice of quotation was made). Writes --out (JSON) and prints the table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from bench.machine import machine  # noqa: E402
from ragtune.core.prompt import ABSTAIN  # noqa: E402
from ragtune.evaluation.qa_score import contains  # noqa: E402
from ragtune.retrieval import Library  # noqa: E402
from ragtune.retrieval.settings import RetrievalSettings  # noqa: E402
from ragtune.serving.grounding import QUOTES, Ranked, rank_quotations  # noqa: E402
from ragtune.training.qa import Question, load_qa_set  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def right(row: dict[str, Any], q: Question, reply: str) -> bool:
    if row["phase"] == "answer":
        return contains(reply, q.answer)
    return contains(reply, row["substitute"]) and not contains(reply, q.answer)


def rules(windows: list[float]) -> dict[str, Callable[[str, Ranked], tuple[str, bool]]]:
    """Each rule: (saved reply, ranking) -> (the reply under the rule, whether it is estimated)."""

    def window(w: float) -> Callable[[str, Ranked], tuple[str, bool]]:
        def choose(saved: str, ranked: Ranked) -> tuple[str, bool]:
            close = ranked.close(w)
            return (saved, False) if saved in close else (close[0], len(close) > 1)

        return choose

    return {
        "as served": lambda saved, ranked: (saved, False),
        "the ranker's first": lambda saved, ranked: (ranked.quotes[0], False),
        **{f"window {w:g}": window(w) for w in windows},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", type=Path, required=True, help="the BEIR-layout QA set asked")
    parser.add_argument("--answers", type=Path, required=True, help="a `ragtune eval qa --answers` file")
    parser.add_argument("--config", required=True, help="which configuration's answers (e.g. grounded+RAG)")
    parser.add_argument("--window", type=float, action="append", help="windows to replay (default 0.5, 1)")
    parser.add_argument("--out", type=Path, default=RESULTS / "quote-window-replay.json")
    args = parser.parse_args()
    by_id = {q.id: q for q in load_qa_set(args.dataset).questions}
    rows = [json.loads(line) for line in args.answers.read_text().splitlines() if line.strip()]
    rows = [
        r
        for r in rows
        if r["config"] == args.config
        and r["phase"] in ("answer", "counterfactual")
        and by_id[r["qid"]].answerable
        and r["reply"].strip() != ABSTAIN
    ]
    if not rows:
        raise SystemExit(f"no quoted answers of {args.config!r} in {args.answers}")
    replay = rules(args.window or [0.5, 1.0])
    counts: dict[str, dict[str, dict[str, int]]] = {}
    with tempfile.TemporaryDirectory(prefix="ragtune-replay-") as scratch:
        library = Library(Path(scratch), RetrievalSettings())
        try:
            embedder = library.embedder()
            for r in rows:
                q = by_id[r["qid"]]
                ranked = rank_quotations(q.text, r["source_texts"], embedder, k=QUOTES)
                if not ranked.quotes:
                    continue
                phase = counts.setdefault(r["phase"], {})
                for name, rule in replay.items():
                    reply, estimated = rule(r["reply"].strip(), ranked)
                    c = phase.setdefault(name, {"n": 0, "right": 0, "estimated": 0})
                    c["n"] += 1
                    c["right"] += right(r, q, reply)
                    c["estimated"] += estimated
        finally:
            library.close()
    result = {
        "command": f"python -m bench.quote_window --dataset {args.dataset} --answers {args.answers} "
        f"--config {args.config}" + "".join(f" --window {w:g}" for w in args.window or []),
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "machine": machine(),
        "phases": counts,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for phase, by_rule in counts.items():
        print(f"{phase} ({next(iter(by_rule.values()))['n']} quoted answers): share right")
        for name, c in by_rule.items():
            note = f" ({c['estimated']} estimated)" if c["estimated"] else ""
            print(f"  {name:20s} {c['right'] / c['n']:.3f}{note}")


if __name__ == "__main__":
    main()
