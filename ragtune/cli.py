"""The `ragtune` command: the CLI root that mounts each package's commands."""

from ragtune.serving.cli import app

__all__ = ["app"]
