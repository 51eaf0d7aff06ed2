"""The `ragtune` command: the CLI root that mounts each package's commands.

The root callback builds the settings once (defaults < ragtune.yaml < RAGTUNE_* < flags) and
keeps them as the root context's object, which every command reads (core.console.root_settings).
Each package adds its own commands here: serving (serve, demo, chat, models), evaluation
(eval), retrieval (collections, ingest, sync, search) and training (train, adapters, data).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

import ragtune.quiet  # noqa: F401  (first: vLLM's log level, before anything imports vLLM)
from ragtune.core.console import fail
from ragtune.evaluation import cli as evaluation_cli
from ragtune.retrieval import cli as retrieval_cli
from ragtune.serving import cli as serving_cli
from ragtune.serving.settings import SettingsError, load_settings
from ragtune.training import cli as training_cli

app = typer.Typer(
    name="ragtune",
    help="Serve domain LLMs: fine-tune for behaviour (LoRA), retrieve for knowledge.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _hide_flag_types() -> None:
    """typer (0.2x) writes `<bool>` beside every flag on every help page, though a flag takes no
    value; show no type for flags. Guarded: a typer without this hook keeps its own display."""
    option = getattr(getattr(typer, "core", None), "TyperOption", None)
    shown = getattr(option, "display_type_rich", None)
    if option is None or shown is None:
        return

    def display_type_rich(self: Any, ctx: Any) -> str | None:
        return None if getattr(self, "is_flag", False) else shown(self, ctx)

    option.display_type_rich = display_type_rich


_hide_flag_types()


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


# The order of `ragtune --help`: commands as registered, then the groups as registered.
serving_cli.register(app)
evaluation_cli.register(app)
retrieval_cli.register(app)
training_cli.register(app)

__all__ = ["app"]
