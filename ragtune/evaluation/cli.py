"""`ragtune eval retrieval|behaviour|qa|route`: options, progress, then the table, JSON and chart.

The measuring itself is in this package's other modules (retrieval, behaviour, qa, route) and
the showing in evaluation.report; this module only reads the flags and drives a run. Settings
come from the root command (core.console.root_settings).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from ragtune.core.console import err_console, fail, progress_bar, root_settings
from ragtune.core.errors import RagtuneError
from ragtune.evaluation import report
from ragtune.evaluation.qa import PHASES, QAEvalOptions
from ragtune.retrieval.cli import open_library
from ragtune.serving.routing import CHUNKS

if TYPE_CHECKING:
    from ragtune.evaluation.retrieval import Dataset
    from ragtune.retrieval.library import Library
    from ragtune.retrieval.settings import RetrievalSettings
    from ragtune.serving.settings import Settings

eval_app = typer.Typer(help="Measure retrieval, answers and behaviour.", no_args_is_help=True)
console = Console()
Opt = typer.Option
JsonOpt = Annotated[bool, Opt("--json", help="print one JSON object on stdout instead of a table")]


def register(app: typer.Typer) -> None:
    """Add the `eval` group to the root app (ragtune/cli.py)."""
    app.add_typer(eval_app, name="eval")


# -- retrieval -----------------------------------------------------------------------------------
MODES = ("dense", "sparse", "hybrid")


@eval_app.command("retrieval")
def eval_retrieval_command(
    ctx: typer.Context,
    dataset: Annotated[
        Path, Opt("--dataset", help="BEIR folder: corpus.jsonl, queries.jsonl, qrels/test.tsv")
    ],
    mode: Annotated[
        list[str] | None, Opt("--mode", help="dense, sparse, hybrid (repeat; default all)")
    ] = None,
    fusion: Annotated[
        list[str] | None,
        Opt("--fusion", help="hybrid fusion: convex, rrf (repeat; default from settings)"),
    ] = None,
    compare: Annotated[
        bool, Opt("--compare", help="every mode and every hybrid fusion method, in one run")
    ] = False,
    max_queries: Annotated[
        int | None, Opt("--max-queries", min=1, help="evaluate the first N queries")
    ] = None,
    collection: Annotated[
        str | None, Opt("--collection", help="collection to (re)use; default eval-<dataset name>")
    ] = None,
    fresh: Annotated[bool, Opt("--fresh", help="drop the collection first and ingest from scratch")] = False,
    plot: Annotated[Path | None, Opt("--plot", help="also write a PNG bar chart of the metrics here")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Ingest a BEIR data set (only what changed) and report nDCG@10, R@10, R@100, MRR@10, latency."""
    from ragtune.evaluation.retrieval import evaluate, load_dataset

    root = root_settings(ctx)  # duck-typed: `.retrieval` and `.indexes_dir`
    settings: RetrievalSettings = root.retrieval
    runs = _retrieval_runs(mode, fusion, compare=compare, default_fusion=settings.fusion)
    quiet = as_json or not sys.stderr.isatty()
    with open_library(settings, Path(root.indexes_dir)) as library:
        data = load_dataset(dataset, max_queries=max_queries)
        name = collection or f"eval-{data.name}"
        c, ingest = _ingest_dataset(library, data, name, fresh=fresh, quiet=quiet)
        results = []
        for m, fused in runs:
            c.embedder.clear_cache()  # each run pays for its own query embeddings
            with progress_bar() as bar:
                task = bar.add_task(report.method_label(m, fused), total=len(data.queries), visible=not quiet)
                step = lambda n, task=task: bar.advance(task, n)  # noqa: E731
                results.append(evaluate(c, data, mode=m, fusion=fused, progress=step))
        stats = c.stats()
    summary = {
        "dataset": str(dataset),
        "collection": name,
        "documents": stats["documents"],
        "chunks": stats["chunks"],
        "queries": len(data.queries),
        "embedder": stats["embedder"],
        "embed_backend": c.embedder.label,
        "index_type": stats["index_type"],
        "default_fusion": settings.fusion,
        "ingest": ingest,
        "machine": {"cpus": os.cpu_count(), "cpu": report.cpu_model(), "python": platform.python_version()},
        "results": results,
    }
    _show_retrieval(summary, data, plot=plot, as_json=as_json)


def _retrieval_runs(
    mode: list[str] | None, fusion: list[str] | None, *, compare: bool, default_fusion: str
) -> list[tuple[str, str | None]]:
    """The (mode, fusion) pairs to measure: each mode once, hybrid once per fusion method."""
    from ragtune.retrieval.fusion import FUSIONS

    modes = list(MODES) if compare else list(dict.fromkeys(mode or MODES))
    fusions = list(FUSIONS) if compare else list(dict.fromkeys(fusion or [default_fusion]))
    for m in modes:
        if m not in MODES:
            raise fail(f"--mode must be dense, sparse or hybrid, got {m!r}")
    for f in fusions:
        if f not in FUSIONS:
            raise fail(f"--fusion must be one of {', '.join(FUSIONS)}, got {f!r}")
    runs: list[tuple[str, str | None]] = [(m, None) for m in modes if m != "hybrid"]
    return runs + [("hybrid", f) for f in fusions if "hybrid" in modes]


def _ingest_dataset(
    library: Library, data: Dataset, name: str, *, fresh: bool, quiet: bool
) -> tuple[Any, dict[str, Any]]:
    """The data set's corpus in collection `name` (only what changed is embedded): the
    collection, and what the ingest did."""
    from ragtune.core.errors import CollectionNotFound
    from ragtune.retrieval.ingest import load_beir, upsert_batches

    if fresh:
        with contextlib.suppress(CollectionNotFound):
            library.drop(name)
    try:
        c = library.open(name)
    except CollectionNotFound:
        err_console.print(f"creating collection {name!r}")
        c = library.create(name)
    everything = list(load_beir(data.corpus))
    docs = [d for d in everything if d.text.strip()]  # BEIR sets hold a few empty documents
    t0 = time.perf_counter()
    with progress_bar() as bar:
        task = bar.add_task(f"ingest {data.name}", total=len(docs), visible=not quiet)
        totals = upsert_batches(c, docs, batch_size=256, progress=lambda n: bar.advance(task, n))
    seconds = round(time.perf_counter() - t0, 2)
    return c, {**totals, "skipped_empty": len(everything) - len(docs), "seconds": seconds}


def _show_retrieval(summary: dict[str, Any], data: Dataset, *, plot: Path | None, as_json: bool) -> None:
    results, ingest = summary["results"], summary["ingest"]
    title = (
        f"{data.name}: {len(data.queries)} queries, {summary['documents']:,} docs, "
        f"{summary['chunks']:,} chunks"
    )
    if plot is not None:
        report.retrieval_chart(results, plot, title)
    if as_json:
        print(json.dumps(summary))
        return
    console.print(report.retrieval_table(results, title=title, default_fusion=summary["default_fusion"]))
    console.print(
        f"ingest: {ingest['added']} added, {ingest['updated']} updated, {ingest['unchanged']} unchanged "
        f"in {ingest['seconds']:.1f} s; latency is per search of 200 chunks (query embedding included)"
        + (f"; chart: {plot}" if plot is not None else "")
    )


# -- behaviour -----------------------------------------------------------------------------------
@eval_app.command("behaviour")
def eval_behaviour_command(
    ctx: typer.Context,
    adapter: Annotated[
        str | None, Opt("--adapter", help="adapter name (omit to score the base only)")
    ] = None,
    data: Annotated[Path, Opt("--data", help="held-out JSONL: messages + expected")] = Path(
        "examples/house-style/heldout.jsonl"
    ),
    scorer: Annotated[
        Path | None, Opt("--scorer", help="Python file with score(); default score.py beside data")
    ] = None,
    limit: Annotated[int | None, Opt(help="score only the first N prompts")] = None,
    max_new_tokens: Annotated[int, Opt("--max-new-tokens")] = 96,
    output: Annotated[Path | None, Opt("--json", help="also write the results here")] = None,
) -> None:
    """Score the base model and an adapter on held-out prompts with a behaviour scorer."""
    from ragtune.core.adapters import inspect_adapter
    from ragtune.evaluation.behaviour import eval_behaviour

    settings: Settings = root_settings(ctx)
    adapter_path = None
    try:
        if adapter is not None:
            adapter_path = settings.adapters_dir / adapter
            inspect_adapter(adapter_path, base_model_path=settings.base_model_path, max_lora_rank=512)
        results = eval_behaviour(
            data,
            base_model=settings.base_model_path,
            adapter=adapter_path,
            scorer=scorer,
            max_new_tokens=max_new_tokens,
            limit=limit,
            console=err_console,
        )
    except RagtuneError as exc:
        raise fail(exc.message) from None
    console.print(report.behaviour_table(results, adapter))
    if output:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(results, indent=2, ensure_ascii=False))


# -- qa ------------------------------------------------------------------------------------------
@eval_app.command("qa")
def eval_qa_command(
    ctx: typer.Context,
    dataset: Annotated[Path, Opt("--dataset", help="BEIR-layout QA set whose queries carry `answer`")],
    models: Annotated[str, Opt("--models", help="comma-separated: base, adapter or profile names")] = "base",
    rag: Annotated[str, Opt("--rag", help="on, off or on,off")] = "on,off",
    split: Annotated[
        str, Opt("--split", help="heldout (passages never trained on), train or all")
    ] = "heldout",
    limit: Annotated[int | None, Opt("--limit", help="ask only the first N questions")] = None,
    top_k: Annotated[int, Opt("--top-k", help="sources per question with RAG on")] = 4,
    max_tokens: Annotated[int, Opt("--max-tokens", help="longest answer")] = 96,
    concurrency: Annotated[int, Opt("--concurrency", help="questions in flight at once")] = 16,
    phases: Annotated[str, Opt("--phases", help="answer,counterfactual,abstain (or a subset)")] = ",".join(
        PHASES
    ),
    server: Annotated[
        str | None, Opt("--server", help="a running ragtune server (default: in-process)")
    ] = None,
    api_key: Annotated[
        str | None, Opt("--api-key", help="admin key of that server (or RAGTUNE_API_KEY)")
    ] = None,
    answers: Annotated[Path | None, Opt("--answers", help="JSONL of answers, for resuming")] = None,
    as_json: Annotated[bool, Opt("--json", help="print one JSON object on stdout")] = False,
    plot: Annotated[Path | None, Opt("--plot", help="write a PNG chart here")] = None,
) -> None:
    """Answers, citations, grounding and abstention for models with and without retrieval."""
    from ragtune.training.qa import load_qa_set

    settings: Settings = root_settings(ctx)
    # vLLM logs to stdout by default; stdout is for the table or the --json object alone.
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
    opts = _qa_options(
        models,
        rag,
        phases,
        split=split,
        limit=limit,
        top_k=top_k,
        max_tokens=max_tokens,
        concurrency=concurrency,
    )
    try:
        load_qa_set(dataset)  # a bad data set fails here, before any engine starts
    except RagtuneError as exc:
        raise fail(exc.message) from None
    answers = answers or settings.indexes_dir / ".eval" / f"qa-{dataset.resolve().name}.jsonl"
    key = api_key or os.environ.get("RAGTUNE_API_KEY")
    summary = _run_qa(settings, dataset, opts, answers=answers, server=server, api_key=key)
    if as_json:
        print(json.dumps(summary))
    else:
        Console().print(report.qa_table(summary))
    if plot:
        report.qa_chart(summary, plot)
        err_console.print(f"chart: {plot}")


def _qa_options(models: str, rag: str, phases: str, **fixed: Any) -> QAEvalOptions:
    """The comma-separated flags read into a run's options (`fixed`: the others, as given); a
    bad value names its flag."""
    model_list = [m.strip() for m in models.split(",") if m.strip()]
    rag_list = []
    for r in (x.strip().lower() for x in rag.split(",") if x.strip()):
        if r not in ("on", "off"):
            raise fail(f"--rag: use on, off or on,off (got {r!r})")
        rag_list.append(r == "on")
    phase_list = tuple(p.strip() for p in phases.split(",") if p.strip())
    if not model_list or not rag_list or not set(phase_list) <= set(PHASES) or not phase_list:
        raise fail(f"--models, --rag and --phases need at least one value each (phases: {', '.join(PHASES)})")
    return QAEvalOptions(models=model_list, rag=rag_list, phases=phase_list, **fixed)


def _run_qa(
    settings: Settings,
    dataset: Path,
    opts: QAEvalOptions,
    *,
    answers: Path,
    server: str | None,
    api_key: str | None,
) -> dict[str, Any]:
    """Ask every question, against `server` or the app in this process, with a bar per phase;
    an interrupted or failed run shows what it finished and how to resume."""
    from ragtune.evaluation.qa import run_qa_eval, summarize_file
    from ragtune.evaluation.qa_api import in_process_client, server_client
    from ragtune.serving.builtin import with_grounded

    async def main() -> dict[str, Any]:
        with progress_bar() as bar:
            tasks: dict[str, Any] = {}

            def progress(phase: str, done: int, total: int) -> None:
                if total == 0:
                    bar.console.print(phase, highlight=False)
                    return
                if phase not in tasks:
                    tasks[phase] = bar.add_task(phase, total=total)
                bar.update(tasks[phase], completed=done, total=total)

            client_cm = (
                server_client(server, api_key) if server else in_process_client(with_grounded(settings))
            )
            # In this process the collection is the indexes folder's, which another eval there shares.
            lock_dir = None if server else Path(settings.indexes_dir)
            async with client_cm as client:
                return await run_qa_eval(
                    client, dataset, opts, results_file=answers, progress=progress, lock_dir=lock_dir
                )

    try:
        return asyncio.run(main())
    except (RagtuneError, KeyboardInterrupt) as exc:
        # Report what finished (answers are on disk as they arrive) and how to go on.
        partial = summarize_file(answers, dataset, opts)
        if partial["configs"]:
            Console().print(report.qa_table(partial))
            err_console.print(f"answers so far are in {answers}; rerun the same command to resume")
        if isinstance(exc, KeyboardInterrupt):
            raise fail("interrupted", code=130) from None
        raise fail(exc.message) from None


# -- route ---------------------------------------------------------------------------------------
@eval_app.command("route")
def eval_route_command(
    ctx: typer.Context,
    dataset: Annotated[Path, Opt("--dataset", help="a routing set (examples/route-mix/make_data.py)")],
    split: Annotated[str, Opt("--split", help="dev, test or all")] = "test",
    calibrate_on: Annotated[
        str | None, Opt("--calibrate", help="also search the floor and margin on this split")
    ] = None,
    out: Annotated[Path | None, Opt("--out", help="write the result as JSON here")] = None,
    chunks: Annotated[int, Opt("--chunks", min=1, help="nearest chunks averaged per collection")] = CHUNKS,
) -> None:
    """Routing accuracy, off-domain fallback and added latency of `model: auto`."""
    from ragtune.evaluation.route import run_route_eval

    try:
        result = run_route_eval(
            root_settings(ctx),
            dataset,
            split=split,
            calibrate_on=calibrate_on,
            chunks=chunks,
            progress=lambda m: err_console.print(m, highlight=False),
        )
    except RagtuneError as exc:
        raise fail(exc.message) from None
    Console().print(report.route_table(result))
    errors = result["summary"]["errors"]
    if errors:
        err_console.print("misrouted: " + ", ".join(f"{k} ({v})" for k, v in errors.items()), highlight=False)
    if out:
        out.write_text(json.dumps(result, indent=1) + "\n")
        err_console.print(f"written: {out}")
