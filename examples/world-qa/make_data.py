"""A small knowledge-conflict QA set in BEIR layout: facts a small model has memorised.

`ragtune eval qa --dataset examples/world-qa --split all` asks each question with the fact's
passage in the collection (answer phase), with the passage's answer replaced by another answer
of the same kind (counterfactual phase: "The capital of France is Madrid." Does the answer follow
the document or the model's memory?), and with the passage removed (abstain phase). The facts are
common knowledge (capital cities), written here in our own words; run this file to rewrite the
set.
"""

from __future__ import annotations

from pathlib import Path

from ragtune.training.qa import write_qa_set

HERE = Path(__file__).resolve().parent

# Capitals only: a counterfactual passage then names another capital ("Madrid is the capital of
# France"), a conflict a reader could believe, not a category error ("Homer is the capital ...").
CAPITALS = [
    ("France", "Paris"),
    ("Germany", "Berlin"),
    ("Italy", "Rome"),
    ("Spain", "Madrid"),
    ("Japan", "Tokyo"),
    ("Russia", "Moscow"),
    ("Egypt", "Cairo"),
    ("England", "London"),
    ("China", "Beijing"),
    ("Greece", "Athens"),
    ("Portugal", "Lisbon"),
    ("Austria", "Vienna"),
    ("Ireland", "Dublin"),
    ("Norway", "Oslo"),
    ("Canada", "Ottawa"),
    ("Sweden", "Stockholm"),
    ("Poland", "Warsaw"),
    ("Hungary", "Budapest"),
    ("Finland", "Helsinki"),
    ("Denmark", "Copenhagen"),
    ("Belgium", "Brussels"),
    ("the Netherlands", "Amsterdam"),
    ("Turkey", "Ankara"),
    ("Thailand", "Bangkok"),
    ("South Korea", "Seoul"),
    ("Kenya", "Nairobi"),
    ("Peru", "Lima"),
    ("Cuba", "Havana"),
    ("Australia", "Canberra"),
    ("Argentina", "Buenos Aires"),
]


def slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")


def rows() -> list[tuple[str, str, str, str, str]]:
    """(id, title, passage, question, answer)"""
    out = []
    for country, city in CAPITALS:
        out.append(
            (
                f"capital-{slug(country)}",
                country,
                f"{city} is the capital of {country}. The government and parliament of {country} "
                f"meets in {city}.",
                f"What is the capital of {country}?",
                city,
            )
        )
    return out


def main() -> None:
    data = rows()
    write_qa_set(
        HERE,
        ({"_id": doc_id, "title": title, "text": text} for doc_id, title, text, _, _ in data),
        (
            ({"_id": f"q-{doc_id}", "text": question, "answer": answer}, doc_id)
            for doc_id, _, _, question, answer in data
        ),
    )


if __name__ == "__main__":
    main()
