"""What every command line of the project shares: the error console, how a command fails, the
settings the root command built, the `--config` option and the progress bar.

The root command (ragtune/cli.py) loads the settings once and keeps them as the root context's
object; each package's commands read them here, so no package imports another's command line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

err_console = Console(stderr=True)

# A command's own --config (serve, demo): its settings again, with that file.
ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="YAML settings file")]


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print a one-paragraph error naming what to fix, and return the exit to raise."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def root_settings(ctx: typer.Context) -> Any:
    """The settings the root command loaded (ragtune.cli): serving's `Settings`, which holds
    every package's section; a package reads the parts it needs."""
    obj = ctx.find_root().obj
    if obj is None:
        raise RuntimeError("settings were not loaded")  # only reachable when misused as a library
    return obj


def progress_bar(*, transient: bool = False) -> Progress:
    """The progress bar of ingest, evaluation and the like, on stderr (stdout holds results)."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=transient,
    )
