"""Yes/no questions under extractive grounding: a quotation cannot say yes or no about a thing no
source names ("Is there wifi on the Granite Line?" quoted "The Granite Line runs between Elm
Terrace and Bramley [1]"). A set of such questions is built here on two collections of the
repository (examples/northwind-qa's lines, examples/world-qa's capitals), answerable ones (the
passage says yes or no: a quotation answers) beside ones no passage answers, and each is run
through the sources a `grounded` request would get (hybrid search, 3 and 4 sources) and what
decides abstention before the engine is asked: the relevance floor (`Ranked.off_topic`) and
the yes/no rule (`serving.grounding.unnamed`).

    .venv/bin/python -m bench.polar [--out bench/results/polar.json]

No QA set of the repository or of ../shared has a yes/no question (Disfl-QA: 34 of 8,000 open
with an auxiliary, most of them disfluent openings), so the rule changes nothing there.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
from contextlib import nullcontext
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from bench.machine import machine  # noqa: E402
from bench.scratch import collection_of  # noqa: E402
from ragtune.serving.grounding import MIN_SIMILARITY, polar, rank_quotations, unnamed  # noqa: E402
from ragtune.training.qa import load_qa_set  # noqa: E402

RESULTS = Path(__file__).parent / "results"
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

# (template, answerable, kind): {line} a northwind line's name; {a} {b} its ends; {trains} its
# trains' make; {mins} its frequency. "worded otherwise": the passage answers in other words.
LINE_QUESTIONS = [
    ("Does the {line} run between {a} and {b}?", True, "held"),
    ("Are bicycles allowed on the {line} during peak hours?", True, "held"),
    ("Is the {line} worked by {trains} trains?", True, "held"),
    ("Do trains on the {line} leave every {mins} minutes?", True, "held"),
    ("Can I take my bike on the {line} at rush hour?", True, "worded otherwise"),
    ("Do {line} trains come every {mins} minutes?", True, "worded otherwise"),
    ("Is the {line} served by {trains} trains?", True, "worded otherwise"),
    ("Is there wifi on the {line}?", False, "absent"),
    ("Are dogs allowed on the {line}?", False, "absent"),
    ("Does the {line} run on Christmas Day?", False, "absent"),
    ("Is there a dining car on the {line}?", False, "absent"),
    ("Can I buy a ticket on board the {line}?", False, "absent"),
]
CAPITAL_QUESTIONS = [
    ("Is {city} the capital of {country}?", True, "held"),
    ("Does the parliament of {country} meet in {city}?", True, "held"),
    ("Is {city} the largest city of {country}?", False, "absent"),
    ("Does {city} have an underground railway?", False, "absent"),
]


def line_questions() -> tuple[Path, list[tuple[str, bool, str]]]:
    qa = load_qa_set(EXAMPLES / "northwind-qa")
    by_line: dict[str, dict[str, str]] = {}
    for p in qa.passages.values():
        facts = by_line.setdefault(p.title or "", {"line": p.title or ""})
        if m := re.search(r"runs between (.+?) and (.+?)\. Trains leave every (\d+) minutes", p.text):
            facts.update(a=m[1], b=m[2], mins=m[3])
        if m := re.search(r"worked by \d+-car (\w+) trains", p.text):
            facts["trains"] = m[1]
    out = []
    for facts in by_line.values():
        if {"a", "trains"} <= facts.keys():
            out += [(t.format(**facts), ok, kind) for t, ok, kind in LINE_QUESTIONS]
    return EXAMPLES / "northwind-qa", out


def capital_questions() -> tuple[Path, list[tuple[str, bool, str]]]:
    qa = load_qa_set(EXAMPLES / "world-qa")
    out = []
    for p in qa.passages.values():
        if m := re.match(r"(.+?) is the capital of (.+?)\.", p.text):
            out += [(t.format(city=m[1], country=m[2]), ok, kind) for t, ok, kind in CAPITAL_QUESTIONS]
    return EXAMPLES / "world-qa", out


def measure(dataset: Path, questions: list[tuple[str, bool, str]], top_k: int) -> list[dict]:
    rows = []
    with collection_of(dataset) as (_, coll):
        for question, answerable, kind in questions:
            texts = [h.text for h in coll.search(question, k=top_k, mode="hybrid")]
            ranked = rank_quotations(question, texts, coll.embedder, k=1)
            rows.append(
                {
                    "question": question,
                    "answerable": answerable,
                    "kind": kind,
                    "floor": ranked.off_topic(MIN_SIMILARITY),
                    "unnamed": unnamed(question, texts),
                    "quoted": ranked.quotes[0] if ranked.quotes else None,
                }
            )
    return rows


def sets_own(datasets: list[Path], top_k: int) -> dict[str, dict[str, int]]:
    """On QA sets of wh-questions: how many questions the rule could touch (those opening with an
    auxiliary) and how many it turns into the abstention, answerable ones among them."""
    out = {}
    for dataset in datasets:
        qa = load_qa_set(dataset)
        asking = [q for q in qa.questions if polar(q.text)]
        fired = answerable = 0
        with collection_of(dataset) if asking else nullcontext((qa, None)) as (_, coll):
            for q in asking:
                texts = [h.text for h in coll.search(q.text, k=top_k, mode="hybrid")]
                if unnamed(q.text, texts):
                    fired += 1
                    answerable += q.answerable
        out[dataset.name] = {
            "questions": len(qa.questions),
            "open_with_an_auxiliary": len(asking),
            "rule_abstains": fired,
            "of_them_answerable": answerable,
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=RESULTS / "polar.json")
    args = parser.parse_args()
    runs = {}
    for top_k in (3, 4):
        rows = []
        for dataset, questions in (line_questions(), capital_questions()):
            rows += [{"set": dataset.name, **r} for r in measure(dataset, questions, top_k)]
        runs[str(top_k)] = rows
    own = sets_own([EXAMPLES / n for n in ("northwind-qa", "world-qa", "conflict-qa", "disflqa")], 4)
    summary = {}
    for top_k, rows in runs.items():
        for kind in ("held", "worded otherwise", "absent"):
            mine = [r for r in rows if r["kind"] == kind]
            summary[f"{top_k} sources, {kind}"] = {
                "questions": len(mine),
                "abstains_floor": round(sum(r["floor"] for r in mine) / len(mine), 3),
                "abstains_floor_or_rule": round(
                    sum(r["floor"] or bool(r["unnamed"]) for r in mine) / len(mine), 3
                ),
            }
    result = {
        "command": "python -m bench.polar",
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "machine": machine(),
        "summary": summary,
        "qa_sets": own,
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print("sources, questions | n | abstains: floor alone | floor or the yes/no rule")
    for name, s in summary.items():
        print(f"{name} | {s['questions']} | {s['abstains_floor']:.3f} | {s['abstains_floor_or_rule']:.3f}")
    print(json.dumps(own))


if __name__ == "__main__":
    main()
