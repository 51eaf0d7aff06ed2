"""How the `ragtune eval` commands show their results: tables in the terminal and PNG charts.

The measuring is elsewhere in this package (retrieval, behaviour, qa, route); evaluation.cli
calls these once a run is done.
"""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path
from typing import Any

from rich.table import Column, Table


def cpu_model() -> str:
    """The CPU's model name, recorded beside every measurement."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown"
    return next(
        (ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name")),
        platform.processor() or "unknown",
    )


def _save(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# -- retrieval -----------------------------------------------------------------------------------
RETRIEVAL_METRICS = (
    ("ndcg@10", "nDCG@10"),
    ("recall@10", "R@10"),
    ("recall@100", "R@100"),
    ("mrr@10", "MRR@10"),
)


def method_label(mode: str, fusion: str | None) -> str:
    return f"hybrid ({fusion})" if mode == "hybrid" and fusion else mode


def retrieval_table(results: list[dict[str, Any]], *, title: str, default_fusion: str) -> Table:
    table = Table(
        Column("method", no_wrap=True),
        *(label for _, label in RETRIEVAL_METRICS),
        "p50 ms",
        "p95 ms",
        "p99 ms",
        title=title,
        caption=f"default fusion: {default_fusion}; best in bold",
    )
    best = {key: max(r[key] for r in results) for key, _ in RETRIEVAL_METRICS}
    for r in results:
        lat = r["latency_ms"]
        cells = [
            f"[bold]{r[key]:.4f}[/]" if r[key] == best[key] else f"{r[key]:.4f}"
            for key, _ in RETRIEVAL_METRICS
        ]
        table.add_row(
            method_label(r["mode"], r["fusion"]),
            *cells,
            f"{lat['p50']:.1f}",
            f"{lat['p95']:.1f}",
            f"{lat['p99']:.1f}",
        )
    return table


def retrieval_chart(results: list[dict[str, Any]], path: Path, title: str) -> None:
    """Grouped bars: one group per metric, one bar per mode / fusion method."""
    plt = _pyplot()
    n = len(RETRIEVAL_METRICS)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * n * max(len(results), 2) / 2), 4.5))
    width = 0.8 / max(len(results), 1)
    for i, r in enumerate(results):
        offset = (i - (len(results) - 1) / 2) * width
        bars = ax.bar(
            [j + offset for j in range(n)],
            [r[key] for key, _ in RETRIEVAL_METRICS],
            width,
            label=method_label(r["mode"], r["fusion"]),
        )
        ax.bar_label(bars, fmt="%.3f", fontsize=7, padding=2, rotation=90)
    ax.set_xticks(range(n), [label for _, label in RETRIEVAL_METRICS])
    ax.set_ylim(0, 1.15)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="upper left", ncols=min(len(results), 4))
    _save(fig, path)


# -- behaviour -----------------------------------------------------------------------------------
def behaviour_table(results: dict[str, Any], adapter: str | None) -> Table:
    table = Table(
        "model", *results["base"].keys(), title=f"behaviour on {results['examples']} held-out prompts"
    )
    for label in ("base", "adapter"):
        if label in results:
            table.add_row(
                label if label == "base" else f"adapter {adapter}",
                *(f"{v:.3f}" for v in results[label].values()),
            )
    return table


# -- qa ------------------------------------------------------------------------------------------
QA_METRICS = [
    ("contains", "answer ⊇ gold"),
    ("f1", "token F1"),
    ("retrieved", "gold in sources"),
    ("citation", "cites gold"),
    ("grounded", "grounded (cf)"),
    ("abstain", "abstains (gold gone)"),
    ("false_abstain", "abstains (answer shown)"),
    ("unanswerable_abstain", "abstains (unanswerable)"),
    ("behaviour", "behaviour"),
]


def qa_table(summary: dict[str, Any]) -> Table:
    table = Table(
        title=f"{summary['dataset']}: {summary.get('questions', '?')} questions "
        f"({summary.get('split', '?')} split), top_k {summary.get('top_k', '?')}",
    )
    table.add_column("model")
    for _, head in QA_METRICS:
        table.add_column(head, justify="right")
    table.add_column("p50 / p99 s", justify="right")
    for label, row in summary["configs"].items():
        cells = [f"{row[k]:.3f}" if k in row else "-" for k, _ in QA_METRICS]
        p50, p99 = row.get("latency_p50_s"), row.get("latency_p99_s")
        table.add_row(label, *cells, f"{p50:.2f} / {p99:.2f}" if p50 is not None else "-")
    return table


def qa_chart(summary: dict[str, Any], path: Path) -> None:
    plt = _pyplot()
    configs = list(summary["configs"])
    metrics = [(k, h) for k, h in QA_METRICS if any(k in summary["configs"][c] for c in configs)]
    fig, ax = plt.subplots(figsize=(max(7, 1.4 * len(metrics) + 2), 4))
    width = 0.8 / max(1, len(configs))
    for i, label in enumerate(configs):
        row = summary["configs"][label]
        xs = [j + i * width for j in range(len(metrics))]
        ax.bar(xs, [row.get(k, 0.0) for k, _ in metrics], width, label=label)
    ax.set_xticks([j + width * (len(configs) - 1) / 2 for j in range(len(metrics))])
    ax.set_xticklabels([h for _, h in metrics], rotation=20, ha="right")
    ax.set_ylim(0, 1)
    ax.set_title(
        f"ragtune eval qa: {Path(summary['dataset']).name}, {summary.get('questions', '?')} questions"
    )
    ax.legend(fontsize=8)
    _save(fig, path)


# -- route ---------------------------------------------------------------------------------------
def route_table(result: dict[str, Any]) -> Table:
    s, lat = result["summary"], result["latency"]
    table = Table(
        title=f"model: auto on {Path(result['dataset']).name} ({result['split']} split, "
        f"{result['profiles']} profiles, floor {result['settings']['min_score']}, "
        f"margin {result['settings']['min_margin']})"
    )
    for head in ("metric", "value"):
        table.add_column(head)
    rows = [
        ("in-domain accuracy", f"{s['accuracy']:.3f} ({s['in_domain']} questions)"),
        ("off-domain fallback", f"{s['off_domain_fallback']:.3f} ({s['off_domain']} questions)"),
        ("in-domain fallback", f"{s['in_domain_fallback']:.3f}"),
        (
            "accuracy / fallback, no descriptions",
            f"{result['without_descriptions']['accuracy']:.3f} / "
            f"{result['without_descriptions']['off_domain_fallback']:.3f}",
        ),  # fmt: skip
        ("added latency p50 / p99", f"{lat['added_p50_ms']:.2f} / {lat['added_p99_ms']:.2f} ms"),
        (
            "with embedding p50 / p99",
            f"{lat['with_embedding_p50_ms']:.2f} / {lat['with_embedding_p99_ms']:.2f} ms",
        ),
        (
            "added before the prompt, p50 / p99",
            f"{lat['to_prompt_added_p50_ms']:.2f} / {lat['to_prompt_added_p99_ms']:.2f} ms",
        ),
    ]
    rows += [(f"  accuracy: {d}", f"{a:.3f}") for d, a in s["per_domain"].items()]
    if "calibrated" in result:
        c = result["calibrated"]
        rows.append((f"calibrated on {c['split']}", f"floor {c['min_score']}, margin {c['min_margin']}"))
    for row in rows:
        table.add_row(*row)
    return table
