"""`python -m ragtune` is the `ragtune` command (vLLM spawns workers: keep the guard)."""

from ragtune.cli import app

if __name__ == "__main__":
    app()
