"""Commands of the training package, mounted on the root `ragtune` app (ragtune/cli.py).

`ragtune train`, `ragtune adapters list|validate` and `ragtune data reader` (`ragtune eval
behaviour` is evaluation's). Flags override the `training` section of the settings; heavy
imports happen inside the commands.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Protocol

import typer
from rich.console import Console
from rich.table import Table

from ragtune.core.console import err_console, fail, root_settings
from ragtune.core.errors import RagtuneError
from ragtune.training.reader import READER_DEFAULTS  # light: the reader data's one set of defaults

if TYPE_CHECKING:
    from ragtune.retrieval.settings import RetrievalSettings
    from ragtune.training.settings import TrainingSettings

console = Console()
adapters_app = typer.Typer(help="LoRA adapters under adapters/.", no_args_is_help=True)
data_app = typer.Typer(help="Build training data sets.", no_args_is_help=True)


class _Engine(Protocol):
    @property
    def max_lora_rank(self) -> int: ...


class Workspace(Protocol):
    """What these commands read of the root settings: serving/settings.py's `Settings`, which
    the root command (ragtune/cli.py) builds from every package's section. Typed here by shape,
    so training never imports serving."""

    @property
    def models_dir(self) -> Path: ...
    @property
    def adapters_dir(self) -> Path: ...
    @property
    def indexes_dir(self) -> Path: ...
    @property
    def base_model_path(self) -> Path: ...
    @property
    def training(self) -> TrainingSettings: ...
    @property
    def retrieval(self) -> RetrievalSettings: ...
    @property
    def engine(self) -> _Engine: ...


def _settings(ctx: typer.Context) -> Workspace:
    settings: Workspace = root_settings(ctx)
    return settings


def _resolve_base(settings: Workspace, base: str | None) -> Path:
    if base is None:
        return settings.base_model_path
    candidate = Path(base).expanduser()
    return candidate if candidate.is_absolute() or candidate.exists() else settings.models_dir / base


Opt = typer.Option


def train_command(
    ctx: typer.Context,
    data: Annotated[
        Path, Opt("--data", help="JSONL (messages / alpaca / prompt-completion) or a datasets folder")
    ],
    name: Annotated[str, Opt("--name", help="adapter name: writes adapters/NAME/")],
    base: Annotated[str | None, Opt("--base", help="base model folder name under models/ or a path")] = None,
    epochs: Annotated[
        str | None, Opt(help="passes over the data, or 'auto' (the default: from the data size)")
    ] = None,
    max_steps: Annotated[int | None, Opt("--max-steps", help="stop after N optimizer steps")] = None,
    lr: Annotated[float | None, Opt(help="learning rate")] = None,
    rank: Annotated[int | None, Opt(help="LoRA rank (8, 16, 32, 64, ...)")] = None,
    alpha: Annotated[int | None, Opt(help="LoRA alpha")] = None,
    dropout: Annotated[float | None, Opt(help="LoRA dropout")] = None,
    target_modules: Annotated[
        str | None, Opt("--target-modules", help="comma-separated module names")
    ] = None,
    layers: Annotated[
        int | None, Opt("--layers", help="LoRA on the last N decoder layers only (faster; default: all)")
    ] = None,
    max_seq_len: Annotated[
        int | None, Opt("--max-seq-len", help="longer examples are cut (or skipped)")
    ] = None,
    too_long: Annotated[str | None, Opt("--too-long", help="truncate | skip")] = None,
    batch_size: Annotated[int | None, Opt("--batch-size")] = None,
    grad_accum: Annotated[int | None, Opt("--grad-accum")] = None,
    eval_split: Annotated[float | None, Opt("--eval-split", help="fraction held out for eval loss")] = None,
    seed: Annotated[int | None, Opt()] = None,
    precision: Annotated[str | None, Opt(help="auto | bf16 | fp16 | fp32")] = None,
    threads: Annotated[
        int | None, Opt(help="torch threads (0: one per core; 1 on a busy shared CPU)")
    ] = None,
    collection: Annotated[
        str | None, Opt("--collection", help="add retrieved context from this collection (RAFT)")
    ] = None,
    context_p: Annotated[float | None, Opt("--context-p", help="chance the answering chunk is shown")] = None,
    distractors: Annotated[int | None, Opt("--distractors", help="distractor chunks per example")] = None,
    resume: Annotated[
        bool, Opt("--resume", help="continue an interrupted run from its last checkpoint")
    ] = False,
    overwrite: Annotated[bool, Opt("--overwrite", help="replace an existing adapter of this name")] = False,
    strict: Annotated[
        bool | None, Opt("--strict", help="exit non-zero, writing nothing, if the eval loss did not fall")
    ] = None,
    samples: Annotated[int | None, Opt("--samples", help="held-out generations printed at the end")] = None,
) -> None:
    """Train a LoRA adapter for a behaviour and write adapters/NAME/."""
    from ragtune.training.train import train

    settings = _settings(ctx)
    modules = [t.strip() for t in target_modules.split(",") if t.strip()] if target_modules else None
    lora = {"rank": rank, "alpha": alpha, "dropout": dropout, "target_modules": modules, "layers": layers}
    steps = {"epochs": epochs, "max_steps": max_steps, "lr": lr, "seed": seed, "grad_accum": grad_accum}
    batches = {"batch_size": batch_size, "max_seq_len": max_seq_len, "too_long": too_long}
    examples = {"eval_split": eval_split, "context_p": context_p, "context_distractors": distractors}
    run = {"precision": precision, "threads": threads, "strict": strict, "samples": samples}
    try:
        train(
            data,
            name,
            base_model=_resolve_base(settings, base),
            adapters_dir=settings.adapters_dir,
            settings=_with_flags(settings.training, {**lora, **steps, **batches, **examples, **run}),
            collection=collection,
            indexes_dir=settings.indexes_dir,
            retrieval_settings=settings.retrieval,
            resume=resume,
            overwrite=overwrite,
            console=err_console,
        )
    except RagtuneError as exc:
        raise fail(exc.message) from None
    except KeyboardInterrupt:
        raise fail(
            f"interrupted; adapters/{name} is unchanged. Continue from the last checkpoint with "
            f"`ragtune train --data {data} --name {name} --resume` (same flags)",
            code=130,
        ) from None


def _with_flags(training: TrainingSettings, flags: dict[str, Any]) -> TrainingSettings:
    """The `training` settings with the flags given on top, checked again; a bad value names
    its flag."""
    from pydantic import ValidationError

    merged = training.model_dump() | {k: v for k, v in flags.items() if v is not None}
    try:
        return type(training).model_validate(merged)
    except ValidationError as exc:
        problems = "; ".join(
            f"--{str(e['loc'][0]).replace('_', '-')}: {e['msg']} (got {e.get('input')!r})"
            for e in exc.errors()
        )
        raise fail(problems) from None


@adapters_app.command("list")
def adapters_list(ctx: typer.Context) -> None:
    """Show each adapter, its rank, base model, metrics and whether it is servable."""
    from ragtune.core.adapters import Unavailable, list_adapters

    settings = _settings(ctx)
    found = list_adapters(
        settings.adapters_dir,
        base_model_path=settings.base_model_path,
        max_lora_rank=settings.engine.max_lora_rank,
    )
    if not found:
        console.print(
            f"no adapters in {settings.adapters_dir}; train one with: ragtune train --data ... --name ..."
        )
        return
    table = Table("name", "rank", "base", "eval loss", "created", "status")
    for name, info in found:
        if isinstance(info, str):
            table.add_row(name, "", "", "", "", f"[red]invalid[/]: {info}")
            continue
        if isinstance(info, Unavailable):  # trained for another base model
            status = f"[yellow]unavailable with {settings.base_model_path.name}[/]: {info.reason}"
            table.add_row(name, "", info.trained_on or "?", "", "", status)
            continue
        m = info.manifest or {}
        loss = (m.get("eval_metrics") or {}).get("eval_loss")
        table.add_row(
            name,
            str(info.rank),
            info.base_model_name or "?",
            f"{loss:.3f}" if loss is not None else "",
            str(m.get("created", "")),
            "[green]ok[/]",
        )
    console.print(table)


@adapters_app.command("validate")
def adapters_validate(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="adapter name under adapters/")],
    engine: Annotated[bool, Opt("--engine/--no-engine", help="also load it in vLLM (about a minute)")] = True,
) -> None:
    """Check an adapter statically, then load it in vLLM with its base and generate with and without it."""
    from ragtune.core.adapters import inspect_adapter

    settings = _settings(ctx)
    path = settings.adapters_dir / name
    try:
        info = inspect_adapter(
            path, base_model_path=settings.base_model_path, max_lora_rank=settings.engine.max_lora_rank
        )
    except RagtuneError as exc:
        raise fail(exc.message) from None
    console.print(
        f"[green]static check passed:[/] {name} (LoRA rank {info.rank}, base {info.base_model_name})"
    )
    if not engine:
        return
    env = dict(os.environ)
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    cmd = [
        sys.executable,
        "-m",
        "ragtune.training.validate",
        "--adapter",
        str(path),
        "--base",
        str(settings.base_model_path),
        "--max-lora-rank",
        str(max(info.rank, settings.engine.max_lora_rank)),
    ]
    with console.status("loading the adapter in vLLM (about a minute) ..."):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    report = None
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith('{"base"'):
            report = json.loads(line)
            break
    if proc.returncode != 0 or report is None:
        tail = "\n".join((proc.stderr or proc.stdout).splitlines()[-15:])
        raise fail(f"vLLM could not load adapter '{name}':\n{tail}")
    console.print(f"base   : {report['base']!r}")
    console.print(f"adapter: {report['adapter']!r}")
    verdict = "changes the output" if report["differs"] else "[yellow]gives the same output as the base[/]"
    console.print(f"[green]vLLM loaded it[/] in {report['load_s']:.0f} s; the adapter {verdict}")


@data_app.command("reader")
def data_reader(
    ctx: typer.Context,
    dataset: Annotated[Path, Opt("--dataset", help="BEIR-layout QA set whose queries carry `answer`")],
    out: Annotated[Path, Opt("--out", help="JSONL file to write")],
    examples: Annotated[int, Opt("--examples", help="examples to build (from the train passages)")] = 600,
    top_k: Annotated[
        int, Opt("--top-k", help="most sources per prompt (the serving profile's top_k)")
    ] = READER_DEFAULTS.top_k,
    min_k: Annotated[int, Opt("--min-k", help="fewest sources per prompt")] = READER_DEFAULTS.min_k,
    p_absent: Annotated[
        float, Opt("--p-absent", help="share without the answering source")
    ] = READER_DEFAULTS.p_absent,
    p_counterfactual: Annotated[
        float, Opt("--p-counterfactual", help="share whose answer span is substituted")
    ] = READER_DEFAULTS.p_counterfactual,
    p_short: Annotated[
        float, Opt("--p-short", help="share whose sources are cut to a sentence or two")
    ] = READER_DEFAULTS.p_short,
    seed: Annotated[int, Opt()] = READER_DEFAULTS.seed,
) -> None:
    """Grounded-reader examples (RAFT, counterfactuals, abstentions) in the serving prompt format."""
    from rich.progress import Progress

    from ragtune.training.reader import ReaderMix, write_reader_data

    settings = _settings(ctx)
    try:
        with Progress(console=err_console) as bar:
            task = bar.add_task("building reader examples", total=examples)
            stats = write_reader_data(
                dataset,
                out,
                settings=settings.retrieval,
                n_examples=examples,
                mix=ReaderMix(top_k, min_k, p_absent, p_counterfactual, p_short, seed),
                on_example=lambda: bar.advance(task),
            )
    except RagtuneError as exc:
        raise fail(exc.message) from None
    console.print(f"wrote {out}: " + ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in vars(stats).items()))


def register(app: typer.Typer) -> None:
    """Add this package's commands to the root app (ragtune/cli.py)."""
    app.command("train")(train_command)
    app.add_typer(adapters_app, name="adapters")
    app.add_typer(data_app, name="data")
