"""Trainer callbacks: progress (a rich bar on a terminal, plain lines in a log), a JSONL metrics log
(one line per logging step) and a divergence guard that stops a run whose loss is not finite."""

from __future__ import annotations

import json
import math
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


class LogProgress(TrainerCallback):
    """One plain line per logging step (step, loss, eval loss, time per step, time left): for log files."""

    def __init__(self, console: Console | None = None):
        self.console = console or Console(stderr=True)
        self.started = time.time()
        self.first_step = 0

    def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self.started, self.first_step = time.time(), state.global_step
        self.console.print(f"training: {state.max_steps} optimizer steps", highlight=False)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kw: Any) -> None:
        if not logs or not state.is_world_process_zero:
            return
        done = state.global_step - self.first_step
        per_step = (time.time() - self.started) / done if done else 0.0
        total = max(state.max_steps, state.global_step)  # a resumed, finished run can be past the plan
        left = per_step * (total - state.global_step)
        parts = [f"step {state.global_step}/{total}" if state.max_steps else "before training:"]
        if "loss" in logs:
            parts.append(f"loss {logs['loss']:.4f}")
        if "eval_loss" in logs:
            parts.append(f"eval loss {logs['eval_loss']:.4f}")
        if done:
            parts.append(f"{per_step:.1f} s/step, {left / 60:.1f} min left")
        self.console.print("  ".join(parts), highlight=False)


class Divergence(TrainerCallback):
    """Stops training at the first logged loss or gradient norm that is NaN or infinite."""

    def __init__(self) -> None:
        self.step: int | None = None
        self.value: float | None = None

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kw: Any) -> None:
        for key in ("loss", "grad_norm", "eval_loss"):
            value = (logs or {}).get(key)
            if isinstance(value, int | float) and not math.isfinite(value):
                self.step, self.value = state.global_step, value
                control.should_training_stop = True
                control.should_save = False
                return
