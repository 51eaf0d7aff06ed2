"""Trainer callbacks: a rich progress bar and a JSONL metrics log (one line per logging step)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from transformers import TrainerCallback


class MetricsLog(TrainerCallback):
    """Appends every `logs` dict (train loss, eval loss, lr, ...) to a JSONL file with step and time."""

    def __init__(self, path: Path):
        self.path = path
        self.started = time.time()

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kw: Any) -> None:
        if not logs or not state.is_world_process_zero:
            return
        row = {"step": state.global_step, "epoch": state.epoch, "time": round(time.time() - self.started, 2)}
        row.update({k: v for k, v in logs.items() if isinstance(v, int | float)})
        with self.path.open("a") as fh:
            fh.write(json.dumps(row) + "\n")


class RichProgress(TrainerCallback):
    """One bar over optimizer steps showing the latest train and eval loss."""

    def __init__(self, console: Console | None = None):
        self.console = console or Console(stderr=True)
        self.progress: Progress | None = None
        self.task: Any = None
        self.loss = "-"
        self.eval_loss = "-"

    def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self.progress = Progress(
            TextColumn("[bold]training"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}  eval {task.fields[eval_loss]}"),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )
        self.progress.start()
        self.task = self.progress.add_task(
            "train", total=state.max_steps, completed=state.global_step, loss="-", eval_loss="-"
        )

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if self.progress is not None:
            self.progress.update(self.task, completed=state.global_step)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kw: Any) -> None:
        if self.progress is None or not logs:
            return
        if "loss" in logs:
            self.loss = f"{logs['loss']:.3f}"
        if "eval_loss" in logs:
            self.eval_loss = f"{logs['eval_loss']:.3f}"
        self.progress.update(self.task, loss=self.loss, eval_loss=self.eval_loss)

    def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
