"""`python -m serving` is the `ragtune` command (vLLM spawns workers: keep the guard)."""

from serving.cli import app

if __name__ == "__main__":
    app()
