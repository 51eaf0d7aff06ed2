"""One LoRA training run, top to bottom: check inputs, build examples, wrap the base with LoRA,
train with checkpoints, then write adapters/NAME/ atomically (PEFT files, manifest, config,
metrics: training.record).

`train()` is the whole run; the CLI only turns flags into its arguments. Checkpoints and the
metrics log of a run in progress live in adapters/.runs/NAME/, so `--resume` finds them and an
interrupted run never touches a previous adapters/NAME/.
"""

from __future__ import annotations

import json
import math
import random
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from ragtune.core.adapters import (
    RUNS_DIR,
    VLLM_LORA_RANKS,
)
from ragtune.core.errors import ConflictError
from ragtune.core.models import ModelError, check_model_dir, model_fingerprint
from ragtune.core.names import NAME_PATTERN
from ragtune.training import record
from ragtune.training.data import fingerprint, load_examples, tokenize_examples
from ragtune.training.fit import (
    Fitted,
    Hardware,
    TrainError,
    fit_model,
    lora_model,
    pick_hardware,
    show_samples,
)
from ragtune.training.settings import TrainingSettings

NAME_RE = re.compile(NAME_PATTERN)
RUN_STATE = "run.json"


class AdapterExists(ConflictError):
    code = "adapter_exists"


def last_checkpoint(run_dir: Path) -> Path | None:
    found = [p for p in run_dir.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()]
    return max(found, key=lambda p: int(p.name.split("-")[-1]), default=None)


# --epochs auto (after OpenAI's fine-tuning API): about 3 passes, more for small sets so that they
# see at least MIN_TARGET_EXAMPLES examples and MIN_STEPS optimizer steps, fewer for big ones.
TARGET_EPOCHS, MAX_EPOCHS = 3, 25
MIN_TARGET_EXAMPLES, MAX_TARGET_EXAMPLES = 100, 25_000
MIN_STEPS = 50
# The eval loss must fall by at least this fraction of the base model's for a run to count as learnt.
MIN_IMPROVEMENT = 0.05


def auto_epochs(n_examples: int, batch: int) -> int:
    """Passes over `n_examples` for --epochs auto, with `batch` examples an optimizer step.

    40 examples in batches of 8 get 10 epochs (50 steps); 1,200 get 3; 20,000 get 1.
    """
    if n_examples <= 0:
        return 1
    epochs = TARGET_EPOCHS
    if n_examples * epochs < MIN_TARGET_EXAMPLES:
        epochs = math.ceil(MIN_TARGET_EXAMPLES / n_examples)
    steps_per_epoch = math.ceil(n_examples / batch)
    epochs = max(epochs, math.ceil(MIN_STEPS / steps_per_epoch))
    if n_examples * epochs > MAX_TARGET_EXAMPLES:
        epochs = max(1, MAX_TARGET_EXAMPLES // n_examples)
    return min(epochs, MAX_EPOCHS)


def learned(eval_start: float | None, eval_end: float | None) -> bool | None:
    """Whether the adapter's eval loss is clearly below the base model's (None: no eval set)."""
    if eval_start is None or eval_end is None:
        return None
    return math.isfinite(eval_end) and eval_end <= eval_start * (1 - MIN_IMPROVEMENT)


def split_eval(items: list[Any], fraction: float, seed: int) -> tuple[list[Any], list[Any]]:
    """Seeded split; at least one eval item when fraction > 0 and two or more items exist."""
    if fraction <= 0 or len(items) < 2:
        return list(items), []
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    n_eval = min(max(1, round(len(items) * fraction)), len(items) - 1)
    held = set(order[:n_eval])
    return [x for i, x in enumerate(items) if i not in held], [x for i, x in enumerate(items) if i in held]


@dataclass
class Prepared:
    """What a run trains on, once every check that needs no model has passed."""

    dest: Path
    hw: Hardware
    train_ex: list[Any]
    eval_ex: list[Any]
    data_fp: str
    raft_stats: Any


def train(
    data: Path,
    name: str,
    *,
    base_model: Path,
    adapters_dir: Path,
    settings: TrainingSettings | None = None,
    collection: str | None = None,
    indexes_dir: Path | None = None,
    retrieval_settings: Any = None,
    resume: bool = False,
    overwrite: bool = False,
    console: Console | None = None,
    progress: bool = True,
) -> Path:
    """Train a LoRA adapter on `data` and write it to `adapters_dir/name`; return that folder."""
    s = settings or TrainingSettings()
    console = console or Console(stderr=True)
    started = time.time()
    prep = _prepare(data, name, s, base_model, adapters_dir, collection, indexes_dir, retrieval_settings,
                    overwrite=overwrite)  # fmt: skip

    tokenizer, train_set, eval_set, epochs = _tokenize(base_model, prep, s, console)
    state = {
        "data_fingerprint": prep.data_fp,
        "base_fingerprint": model_fingerprint(base_model),
        "settings": s.model_dump(),
        "collection": collection,
    }
    run_dir, checkpoint = _run_folder(adapters_dir / RUNS_DIR / name, name, state, resume, console)
    model = lora_model(base_model, s, prep.hw)
    fit = fit_model(model, tokenizer, train_set, eval_set, run_dir, checkpoint, s, prep.hw, epochs, console,
               progress=progress, name=name)  # fmt: skip

    train_metrics = record.train_metrics(
        fit, train_set, prep.hw, checkpoint=checkpoint, raft_stats=prep.raft_stats
    )
    eval_metrics = {
        "eval_loss_start": fit.eval_start,
        "eval_loss": fit.eval_end,
        "examples": len(eval_set.rows),
        "truncated": eval_set.truncated,
        "skipped": eval_set.skipped,
        "learned": learned(fit.eval_start, fit.eval_end),
    }
    if s.samples:
        held_out = bool(prep.eval_ex)
        show_samples(
            fit.model, tokenizer, prep.eval_ex or prep.train_ex, s.samples, console, held_out=held_out
        )
    if eval_metrics["learned"] is False:
        _not_learned(fit, s, name, console)

    train_metrics["wall_s"] = round(time.time() - started, 1)
    config, manifest = record.run_records(
        data=data,
        name=name,
        base_model=base_model,
        collection=collection,
        settings=s,
        hw=prep.hw,
        data_fp=prep.data_fp,
        retrieval_settings=retrieval_settings,
        train_metrics=train_metrics,
        eval_metrics=eval_metrics,
    )
    record.write_adapter(fit.model, prep.dest, base_model, run_dir, config, manifest)
    shutil.rmtree(run_dir, ignore_errors=True)  # the adapter holds the metrics; checkpoints are spent
    console.print(
        f"[green]adapter written:[/] {prep.dest}  train loss {fit.training_loss:.3f}"
        + (f", eval loss {fit.eval_start:.3f} -> {fit.eval_end:.3f}" if fit.eval_start is not None else "")
        + (f", eval loss {fit.eval_end:.3f}" if fit.eval_start is None and fit.eval_end is not None else "")
    )
    return prep.dest


def _tokenize(
    base_model: Path, prep: Prepared, s: TrainingSettings, console: Console
) -> tuple[Any, Any, Any, float]:
    """The base model's tokenizer, the training and eval sets tokenized (cut or skipped past
    max_seq_len) and the epochs to run; one line says what will be trained."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_model)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    train_set = tokenize_examples(tokenizer, prep.train_ex, max_seq_len=s.max_seq_len, too_long=s.too_long)
    eval_set = tokenize_examples(tokenizer, prep.eval_ex, max_seq_len=s.max_seq_len, too_long=s.too_long)
    if not train_set.rows:
        raise TrainError(
            f"no training example fits --max-seq-len {s.max_seq_len} ({train_set.skipped} skipped); raise it",
            param="max_seq_len",
        )
    epochs = (
        float(auto_epochs(len(train_set.rows), s.batch_size * s.grad_accum))
        if s.epochs == "auto"
        else float(s.epochs)
    )
    cut = train_set.truncated + eval_set.truncated
    dropped = train_set.skipped + eval_set.skipped
    console.print(
        f"{len(train_set.rows)} training / {len(eval_set.rows)} eval examples, "
        f"{train_set.tokens} tokens ({train_set.label_tokens} carry loss); "
        f"longer than {s.max_seq_len} tokens: {cut} truncated, {dropped} skipped; "
        f"{prep.hw.device} {prep.hw.precision}; {epochs:g} epochs"
        + (" (--epochs auto)" if s.epochs == "auto" else "")
        + f", lr {s.lr:g}"
    )
    return tokenizer, train_set, eval_set, epochs


def _not_learned(fit: Fitted, s: TrainingSettings, name: str, console: Console) -> None:
    """An eval loss that did not clearly fall: a warning, or with --strict the end of the run
    before anything is written."""
    message = (
        f"the adapter did not learn: eval loss {fit.eval_end:.3f} is not clearly below the base model's "
        f"{fit.eval_start:.3f} (needs {MIN_IMPROVEMENT:.0%} lower). Try more --epochs, a higher --lr, or "
        "more data"
    )
    if s.strict:
        raise TrainError(f"{message}; adapters/{name} was not written (--strict)", param="epochs")
    console.print(f"[bold yellow]WARNING:[/] {message}", highlight=False)


def _prepare(
    data: Path,
    name: str,
    s: TrainingSettings,
    base_model: Path,
    adapters_dir: Path,
    collection: str | None,
    indexes_dir: Path | None,
    retrieval_settings: Any,
    *,
    overwrite: bool,
) -> Prepared:
    """Every check that needs no model, then the examples: loaded, validated, given retrieved
    context (`collection`), and split into training and eval sets."""
    if not NAME_RE.match(name):
        raise TrainError(
            f"--name {name!r}: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit",
            param="name",
        )
    if s.rank not in VLLM_LORA_RANKS:
        raise TrainError(f"--rank {s.rank}: vLLM serves only ranks {VLLM_LORA_RANKS}", param="rank")
    problem = check_model_dir(base_model)
    if problem is not None:
        raise ModelError(
            f"base model: {problem}. Pass --base with a model folder (see `ragtune models list`) "
            "or run `ragtune models import-default`",
            param="base",
        )
    dest = adapters_dir / name
    if dest.exists() and not overwrite:
        raise AdapterExists(
            f"adapter '{name}' already exists at {dest}; "
            "pass --overwrite to replace it or choose another --name",
            param="name",
        )
    hw = pick_hardware(s.precision)

    examples, given_eval = load_examples(data)
    raft_stats = None
    if collection is not None:
        from ragtune.retrieval import Library
        from ragtune.training.raft import add_context

        if indexes_dir is None or retrieval_settings is None:
            raise TrainError("--collection needs indexes_dir and retrieval settings", param="collection")
        library = Library(indexes_dir, retrieval_settings)
        try:
            coll = library.open(collection)
            examples, raft_stats = add_context(
                examples, coll, p=s.context_p, distractors=s.context_distractors, seed=s.seed
            )
            if given_eval:
                given_eval, _ = add_context(
                    given_eval, coll, p=s.context_p, distractors=s.context_distractors, seed=s.seed + 1
                )
        finally:
            library.close()
    data_fp = fingerprint(examples + (given_eval or []))
    train_ex, eval_ex = (examples, given_eval) if given_eval else split_eval(examples, s.eval_split, s.seed)
    return Prepared(dest, hw, train_ex, eval_ex, data_fp, raft_stats)


def _run_folder(
    run_dir: Path, name: str, state: dict[str, Any], resume: bool, console: Console
) -> tuple[Path, Path | None]:
    """The run's checkpoints and metrics folder, and the checkpoint to resume from: only a run
    of the same data and settings resumes; otherwise an earlier run's folder is discarded."""
    if resume:
        checkpoint = last_checkpoint(run_dir) if run_dir.is_dir() else None
        if checkpoint is None:
            raise TrainError(f"--resume: no checkpoint of '{name}' in {run_dir}; run without --resume")
        saved = json.loads((run_dir / RUN_STATE).read_text()) if (run_dir / RUN_STATE).exists() else None
        if saved != json.loads(json.dumps(state)):
            raise TrainError(
                f"--resume: the data, base model or settings differ from the interrupted run in {run_dir}; "
                "use the same flags, or run without --resume to start over"
            )
        console.print(f"resuming from {checkpoint}")
        return run_dir, checkpoint
    if run_dir.exists():
        console.print(f"discarding checkpoints of an earlier run in {run_dir} (--resume continues one)")
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    (run_dir / RUN_STATE).write_text(json.dumps(state, indent=2))
    return run_dir, None
