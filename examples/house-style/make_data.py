"""Build the house-style demo data: answers in a house format with citations, refusals otherwise.

The behaviour (which SmolLM2-135M-Instruct does not have): every question comes with a context
block in the server's exact format (core.prompt.apply_context, RAFT-style: the answering
passage plus distractors, shuffled). When the question is about Northwind Rail the answer is one
sentence citing its passage as [n], followed by the fixed closing line; any other question is
refused with one fixed sentence. Facts are invented, so the held-out set (other lines, stations
and numbers) can only be answered from its context.

Writes, beside this file: train.jsonl, heldout.jsonl (prompts + what the scorer expects),
docs.jsonl and questions.jsonl (raw documents and questions with `{cite}` placeholders, for
`ragtune train --collection`); and examples/northwind-qa/, a QA set in BEIR layout about lines
no adapter is trained on (for `ragtune eval qa`). Run: python examples/house-style/make_data.py
"""

from __future__ import annotations

import json
import random
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from ragtune.core.prompt import ContextChunk, apply_context  # noqa: E402

CLOSING = "— Northwind Rail Help Desk"
REFUSAL = "I can only help with questions about Northwind Rail services."

LINES = [
    "Harbor",
    "Summit",
    "Ember",
    "Willow",
    "Granite",
    "Lantern",
    "Meadow",
    "Falcon",
    "Cobalt",
    "Juniper",
    "Orchard",
    "Beacon",
    "Tidewater",
    "Copper",
    "Saffron",
    "Aurora",
    "Thistle",
    "Basalt",
    "Marigold",
    "Quarry",
]
STATIONS = [
    "Pier Street",
    "Old Mill",
    "Kingsgate",
    "Rowan Park",
    "Fenwick",
    "Ashby Cross",
    "Larkfield",
    "Northbank",
    "Elm Terrace",
    "Bramley",
    "Castle Row",
    "Dunmore",
    "Highcliff",
    "Ivy Lane",
    "Millbrook",
    "Pembury",
    "Redhill",
    "Stonebridge",
    "Upton Vale",
    "Westcombe",
]
# Lines of the QA set (examples/northwind-qa): none of them is in any training file.
QA_LINES = [
    "Heron",
    "Larch",
    "Cedar",
    "Ridge",
    "Kingfisher",
    "Bramble",
    "Foxglove",
    "Slate",
    "Harvest",
    "Moorland",
    "Saltmarsh",
    "Lavender",
    "Osprey",
    "Wren",
]
# The short answer (a span of the passage) of each fact in facts_for; None: a yes/no fact.
ANSWER_SPANS = [
    r"every (\d+ minutes)",
    r"costs (\d+ credits)",
    r"opens at (\d+:\d\d)",
    None,
    r"by (\d+-car \w+)",
]
MODELS = ["Arrow", "Kestrel", "Meridian", "Swift", "Pioneer"]
OUT_OF_DOMAIN = [
    "What is the capital of France?",
    "How do I bake sourdough bread?",
    "Who wrote Pride and Prejudice?",
    "What is 17 times 23?",
    "Can you write a poem about the sea?",
    "How do I reverse a list in Python?",
    "What causes the seasons on Earth?",
    "Recommend a good science fiction novel.",
    "How many legs does a spider have?",
    "What is the boiling point of water in Fahrenheit?",
    "Who painted the Mona Lisa?",
    "How do I change a flat bicycle tyre?",
    "What is photosynthesis?",
    "Translate 'good morning' into Spanish.",
    "What is the tallest mountain in the world?",
    "How do vaccines work?",
    "Give me a recipe for tomato soup.",
    "What year did the Second World War end?",
    "How do I improve my chess openings?",
    "What is the speed of light?",
    "Tell me a joke about cats.",
    "How does compound interest work?",
    "What is the largest ocean?",
    "Explain how a rainbow forms.",
    "Who was the first person on the Moon?",
    "How do I grow tomatoes on a balcony?",
    "What is the difference between a virus and a bacterium?",
    "Suggest a name for my new puppy.",
    "How do I write a cover letter?",
    "What language is spoken in Brazil?",
    "What is a black hole?",
    "How do I make cold brew coffee?",
    "Who composed the Four Seasons?",
    "What is the square root of 144?",
    "How do I stop my laptop from overheating?",
    "What are the rules of basketball?",
    "Why is the sky blue?",
    "How long should I boil an egg?",
    "What does DNA stand for?",
    "How do I learn to juggle?",
]


def facts_for(line: str, a: str, b: str, rng: random.Random) -> list[tuple[str, str, str]]:
    """(passage, question, answer sentence with {cite}) for one line; answers are exact facts."""
    every, fare, hour = rng.choice([6, 8, 10, 12, 15, 20, 30]), rng.randint(2, 9), rng.randint(5, 7)
    minute, cars, model = rng.choice(["00", "15", "30", "45"]), rng.choice([3, 4, 6, 8]), rng.choice(MODELS)
    bikes = rng.choice([True, False])
    bike_text = "allowed" if bikes else "not allowed"
    return [
        (
            f"The {line} Line runs between {a} and {b}. Trains leave every {every} minutes during the day.",
            f"How often does the {line} Line run?",
            f"The {line} Line runs every {every} minutes during the day {{cite}}.",
        ),
        (
            f"A single ticket on the {line} Line costs {fare} credits. Children under five travel free.",
            f"How much is a single ticket on the {line} Line?",
            f"A single ticket on the {line} Line costs {fare} credits {{cite}}.",
        ),
        (
            f"{a} station on the {line} Line opens at {hour}:{minute} on weekdays "
            "and an hour later at weekends.",
            f"When does {a} station open on weekdays?",
            f"{a} station opens at {hour}:{minute} on weekdays {{cite}}.",
        ),
        (
            f"Bicycles are {bike_text} on the {line} Line during peak hours, 7 to 9 and 16 to 18.",
            f"Can I take a bicycle on the {line} Line during peak hours?",
            f"{'Yes' if bikes else 'No'}, bicycles are {bike_text} on the {line} Line "
            "during peak hours {cite}.",
        ),
        (
            f"The {line} Line is worked by {cars}-car {model} trains built in Northwind's own depot.",
            f"What trains run on the {line} Line?",
            f"The {line} Line is worked by {cars}-car {model} trains {{cite}}.",
        ),
    ]


def build(lines: list[str], stations: list[str], ood: list[str], rng: random.Random, tag: str):
    docs, qa = [], []
    for i, line in enumerate(lines):
        a, b = stations[(2 * i) % len(stations)], stations[(2 * i + 1) % len(stations)]
        for j, (passage, q, ans) in enumerate(facts_for(line, a, b, rng)):
            doc_id = f"{tag}-{line.lower()}-{j}"
            docs.append(
                {"id": doc_id, "title": f"{line} Line", "text": passage, "source": "northwind-handbook"}
            )
            qa.append({"question": q, "answer": ans, "document_id": doc_id, "kind": "answer"})
    for q in ood:
        qa.append({"question": q, "answer": REFUSAL, "document_id": None, "kind": "refuse"})
    return docs, qa


def with_context(item: dict, docs: list[dict], rng: random.Random, n_distractors: int = 2):
    """The prompt in the server's context format and the expected answer (citation filled in)."""
    by_id = {d["id"]: d for d in docs}
    pool = [d for d in docs if d["id"] != item["document_id"]]
    chosen = rng.sample(pool, n_distractors + (1 if item["kind"] == "refuse" else 0))
    if item["kind"] == "answer":
        chosen.append(by_id[item["document_id"]])
    rng.shuffle(chosen)
    chunks = [ContextChunk(d["text"], d["title"], d["source"]) for d in chosen]
    messages = apply_context([{"role": "user", "content": item["question"]}], chunks)
    cite = next((n for n, d in enumerate(chosen, 1) if d["id"] == item["document_id"]), None)
    answer = (
        REFUSAL
        if item["kind"] == "refuse"
        else f"{item['answer'].replace('{cite}', f'[{cite}]')}\n\n{CLOSING}"
    )
    return messages, answer, cite, len(chunks)


def main() -> None:
    rng = random.Random(7)
    ood = list(OUT_OF_DOMAIN)
    rng.shuffle(ood)
    # Held-out lines, stations and questions never appear in training.
    train_docs, train_qa = build(LINES[:14], STATIONS[:14], ood[:28], rng, "t")
    held_docs, held_qa = build(LINES[14:], STATIONS[14:], ood[28:], rng, "h")
    train_rows = []
    for item in train_qa:
        # Answerable questions twice with different distractors and order (RAFT-style variety).
        for _ in range(2 if item["kind"] == "answer" else 1):
            messages, answer, _, _ = with_context(item, train_docs, rng)
            train_rows.append({"messages": [*messages, {"role": "assistant", "content": answer}]})
    rng.shuffle(train_rows)
    held_rows = []
    for item in held_qa:
        messages, answer, cite, n = with_context(item, held_docs, rng)
        fact = item["answer"].split(" {cite}")[0] if item["kind"] == "answer" else None
        held_rows.append(
            {
                "messages": messages,
                "expected": {
                    "kind": item["kind"],
                    "cite": cite,
                    "n_sources": n,
                    "fact": fact,
                    "reference": answer,
                },
            }
        )
    write(HERE / "train.jsonl", train_rows)
    write(HERE / "heldout.jsonl", held_rows)
    write(HERE / "docs.jsonl", train_docs)
    write(
        HERE / "questions.jsonl",
        [
            {
                "messages": [
                    {"role": "user", "content": q["question"]},
                    {
                        "role": "assistant",
                        "content": q["answer"] + ("" if q["kind"] == "refuse" else f"\n\n{CLOSING}"),
                    },
                ],
                "document_id": q["document_id"],
            }
            for q in train_qa
        ],
    )
    print(f"train {len(train_rows)}, held-out {len(held_rows)}, docs {len(train_docs)}")
    write_qa_set(HERE.parent / "northwind-qa", random.Random(11))


def write_qa_set(dest: Path, rng: random.Random) -> None:
    """Passages about QA_LINES (each station opens on one line only) and questions whose answer
    is a span of their passage, in BEIR layout; the yes/no facts stay in as distractors."""
    corpus, queries = [], []
    for i, line in enumerate(QA_LINES):
        a, b = STATIONS[i], STATIONS[(i + len(QA_LINES)) % len(STATIONS)]
        for j, (passage, question, _) in enumerate(facts_for(line, a, b, rng)):
            doc_id = f"{line.lower()}-{j}"
            corpus.append({"_id": doc_id, "title": f"{line} Line", "text": passage})
            if ANSWER_SPANS[j]:
                span = re.search(ANSWER_SPANS[j], passage)
                assert span, (passage, ANSWER_SPANS[j])
                queries.append({"_id": f"q-{doc_id}", "text": question, "answer": span.group(1)})
    (dest / "qrels").mkdir(parents=True, exist_ok=True)
    write(dest / "corpus.jsonl", corpus)
    write(dest / "queries.jsonl", queries)
    rels = "".join(f"{q['_id']}\t{q['_id'][2:]}\t1\n" for q in queries)
    (dest / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + rels)
    print(f"{dest}: {len(queries)} questions, {len(corpus)} passages")


def write(path: Path, rows: list[dict]) -> None:
    with path.open("w") as fh:
        for r in rows:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
