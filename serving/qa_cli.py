"""`ragtune eval qa` on the command line: options, progress, the table, JSON and the chart.

The measuring itself is `serving.qa_eval.run_qa_eval`; this module only drives and shows it.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer

from ragtune.core.errors import RagtuneError
from ragtune.serving.builtin import with_grounded
from ragtune.serving.qa_eval import (
    PHASES,
    QAEvalOptions,
    in_process_client,
    run_qa_eval,
    server_client,
    summarize_file,
)
from ragtune.training.qa import load_qa_set

METRICS = [
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


def render_table(summary: dict[str, Any]) -> Any:
    from rich.table import Table

    table = Table(
        title=f"{summary['dataset']}: {summary.get('questions', '?')} questions "
        f"({summary.get('split', '?')} split), top_k {summary.get('top_k', '?')}",
    )
    table.add_column("model")
    for _, head in METRICS:
        table.add_column(head, justify="right")
    table.add_column("p50 / p99 s", justify="right")
    for label, row in summary["configs"].items():
        cells = [f"{row[k]:.3f}" if k in row else "-" for k, _ in METRICS]
        p50, p99 = row.get("latency_p50_s"), row.get("latency_p99_s")
        table.add_row(label, *cells, f"{p50:.2f} / {p99:.2f}" if p50 is not None else "-")
    return table


def plot_summary(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    configs = list(summary["configs"])
    metrics = [(k, h) for k, h in METRICS if any(k in summary["configs"][c] for c in configs)]
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
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def eval_qa_command(
    ctx: typer.Context,
    dataset: Annotated[
        Path, typer.Option("--dataset", help="BEIR-layout QA set whose queries carry `answer`")
    ],
    models: Annotated[
        str, typer.Option("--models", help="comma-separated: base, adapter or profile names")
    ] = "base",
    rag: Annotated[str, typer.Option("--rag", help="on, off or on,off")] = "on,off",
    split: Annotated[
        str, typer.Option("--split", help="heldout (passages never trained on), train or all")
    ] = "heldout",
    limit: Annotated[int | None, typer.Option("--limit", help="ask only the first N questions")] = None,
    top_k: Annotated[int, typer.Option("--top-k", help="sources per question with RAG on")] = 4,
    max_tokens: Annotated[int, typer.Option("--max-tokens", help="longest answer")] = 96,
    concurrency: Annotated[int, typer.Option("--concurrency", help="questions in flight at once")] = 16,
    phases: Annotated[
        str, typer.Option("--phases", help="answer,counterfactual,abstain (or a subset)")
    ] = ",".join(PHASES),
    server: Annotated[
        str | None, typer.Option("--server", help="a running ragtune server (default: in-process)")
    ] = None,
    api_key: Annotated[
        str | None, typer.Option("--api-key", help="admin key of that server (or RAGTUNE_API_KEY)")
    ] = None,
    answers: Annotated[Path | None, typer.Option("--answers", help="JSONL of answers, for resuming")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object on stdout")] = False,
    plot: Annotated[Path | None, typer.Option("--plot", help="write a PNG chart here")] = None,
) -> None:
    """Answers, citations, grounding and abstention for models with and without retrieval."""

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ragtune.core.console import err_console as err
    from ragtune.core.console import fail

    settings = ctx.find_root().obj  # the root command loaded the settings (serving.cli)

    # vLLM logs to stdout by default; stdout is for the table or the --json object alone.
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
    model_list = [m.strip() for m in models.split(",") if m.strip()]
    rag_list = []
    for r in (x.strip().lower() for x in rag.split(",") if x.strip()):
        if r not in ("on", "off"):
            raise fail(f"--rag: use on, off or on,off (got {r!r})")
        rag_list.append(r == "on")
    phase_list = tuple(p.strip() for p in phases.split(",") if p.strip())
    if not model_list or not rag_list or not set(phase_list) <= set(PHASES) or not phase_list:
        raise fail(f"--models, --rag and --phases need at least one value each (phases: {', '.join(PHASES)})")
    try:
        load_qa_set(dataset)  # a bad data set fails here, before any engine starts
    except RagtuneError as exc:
        raise fail(exc.message) from None
    opts = QAEvalOptions(
        models=model_list,
        rag=rag_list,
        split=split,
        limit=limit,
        top_k=top_k,
        max_tokens=max_tokens,
        concurrency=concurrency,
        phases=phase_list,
    )
    answers = answers or settings.indexes_dir / ".eval" / f"qa-{dataset.resolve().name}.jsonl"
    key = api_key or os.environ.get("RAGTUNE_API_KEY")

    async def main() -> dict[str, Any]:
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=err, transient=False) as bar:
            tasks: dict[str, Any] = {}

            def progress(phase: str, done: int, total: int) -> None:
                if total == 0:
                    bar.console.print(phase, highlight=False)
                    return
                if phase not in tasks:
                    tasks[phase] = bar.add_task(phase, total=total)
                bar.update(tasks[phase], completed=done, total=total)

            client_cm = server_client(server, key) if server else in_process_client(with_grounded(settings))
            async with client_cm as client:
                return await run_qa_eval(client, dataset, opts, results_file=answers, progress=progress)

    try:
        summary = asyncio.run(main())
    except (RagtuneError, KeyboardInterrupt) as exc:
        # Report what finished (answers are on disk as they arrive) and how to go on.
        partial = summarize_file(answers, dataset, opts)
        if partial["configs"]:
            Console().print(render_table(partial))
            err.print(f"answers so far are in {answers}; rerun the same command to resume")
        if isinstance(exc, KeyboardInterrupt):
            raise fail("interrupted", code=130) from None
        raise fail(exc.message) from None
    if as_json:
        print(json.dumps(summary))
    else:
        Console().print(render_table(summary))
    if plot:
        plot_summary(summary, plot)
        err.print(f"chart: {plot}")
