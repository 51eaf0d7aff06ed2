"""Commands of the training package, mounted on the root `ragtune` app by serving.cli."""

from __future__ import annotations

import typer


def register(app: typer.Typer, eval_app: typer.Typer) -> None:
    """Add this package's commands to the root app and its `eval` group."""
