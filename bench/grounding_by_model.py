"""The 2x2 across catalogue models: one table and one chart from `ragtune eval qa --json` files.

    python -m bench.grounding_by_model --runs DIR --out bench/results/grounding-by-model

DIR holds one summary per model, set and retrieval, named `MODEL__SET.json` (RAG on: the
configurations `base+RAG` and `grounded+RAG`) and `MODEL__SET__off.json` (`base`, no retrieval),
each what `ragtune --base-model MODEL eval qa --dataset examples/SET ... --json` printed. Prints
the table (markdown) and writes OUT.json (the cells) and OUT.png (the chart).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

# (column, set, measure): what the table and chart show, in order.
COLUMNS = [
    ("world-qa: answers", "world-qa", "contains"),
    ("world-qa: follows altered source", "world-qa", "grounded"),
    ("world-qa: abstains, gold gone", "world-qa", "abstain"),
    ("northwind-qa: answers", "northwind-qa", "contains"),
    ("northwind-qa: follows altered source", "northwind-qa", "grounded"),
    ("northwind-qa: abstains, gold gone", "northwind-qa", "abstain"),
    ("conflict-qa: answers", "conflict-qa", "contains"),
    ("conflict-qa: follows altered source", "conflict-qa", "grounded"),
    ("conflict-qa: abstains, gold gone", "conflict-qa", "abstain"),
    ("Disfl-QA: follows altered source", "disflqa", "grounded"),
    ("far answers: follows altered source", "far", "grounded"),
]
ROWS = [
    ("base, no retrieval", "base", "off"),
    ("base + RAG", "base+RAG", "RAG"),
    ("grounded", "grounded+RAG", "RAG"),
]


def load(runs: Path) -> dict[str, dict[str, dict[str, Any]]]:
    """{model: {SET or SET__off: configs}} from the summaries in `runs`, catalogue models first,
    smallest first."""
    from ragtune.core.catalogue import CATALOGUE

    out: dict[str, dict[str, dict[str, Any]]] = {}
    for path in sorted(runs.glob("*__*.json")):
        model, rest = path.stem.split("__", 1)
        out.setdefault(model, {})[rest] = json.loads(path.read_text())["configs"]
    order = list(CATALOGUE)
    return dict(
        sorted(out.items(), key=lambda kv: (order.index(kv[0]) if kv[0] in order else len(order), kv[0]))
    )


def cells(runs: dict[str, dict[str, dict[str, Any]]]) -> dict[str, dict[str, dict[str, float | None]]]:
    """{model: {row: {column: value or None}}}."""
    table: dict[str, dict[str, dict[str, float | None]]] = {}
    for model, sets in runs.items():
        for row, config, retrieval in ROWS:
            line = table.setdefault(model, {}).setdefault(row, {})
            for column, name, measure in COLUMNS:
                found = sets.get(name if retrieval == "RAG" else f"{name}__off", {}).get(config, {})
                # Without retrieval only the answers are asked: there is no source to follow.
                line[column] = None if retrieval == "off" and measure != "contains" else found.get(measure)
    return table


def markdown(table: dict[str, dict[str, dict[str, float | None]]]) -> str:
    head = "| model | configuration | " + " | ".join(c for c, *_ in COLUMNS) + " |"
    lines = [head, "|---|---|" + "---:|" * len(COLUMNS)]
    for model, rows in table.items():
        for row, values in rows.items():
            shown = ["" if v is None else f"{v:.3f}" for v in values.values()]
            lines.append(f"| {model} | {row} | " + " | ".join(shown) + " |")
    return "\n".join(lines) + "\n"


def chart(table: dict[str, dict[str, dict[str, float | None]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bars = [(m, model, j, row) for m, (model, rows) in enumerate(table.items()) for j, row in enumerate(rows)]
    width = 0.8 / len(bars)
    fig, ax = plt.subplots(figsize=(16, 4.5))
    shades = plt.get_cmap("tab20c")  # four shades of one hue per model, darkest for `grounded`
    for i, (m, model, j, row) in enumerate(bars):
        values = [table[model][row][c] for c, *_ in COLUMNS]
        xs = [k + i * width for k, v in enumerate(values) if v is not None]
        if not xs:
            continue
        color = shades((4 * m + 2 - j) % 20)
        ax.bar(xs, [v for v in values if v is not None], width, label=f"{model}: {row}", color=color)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(COLUMNS))])
    ax.set_xticklabels([c.replace(": ", ":\n") for c, *_ in COLUMNS], fontsize=7)
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=7, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.18))
    ax.set_title("ragtune eval qa by base model (bench/results/grounding-by-model.md)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="path without extension")
    args = p.parse_args()
    table = cells(load(args.runs))
    args.out.with_suffix(".json").write_text(json.dumps(table, indent=1) + "\n")
    chart(table, args.out.with_suffix(".png"))
    print(markdown(table))


if __name__ == "__main__":
    main()
