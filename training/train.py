"""One LoRA training run, top to bottom: check inputs, build examples, wrap the base with LoRA,
train with checkpoints, then write adapters/NAME/ atomically (PEFT files, manifest, config, metrics).

`train()` is the whole run; the CLI only turns flags into its arguments. Checkpoints and the
metrics log of a run in progress live in adapters/.runs/NAME/, so `--resume` finds them and an
interrupted run never touches a previous adapters/NAME/.
"""

from __future__ import annotations

import json
import math
import random
import re
import resource
import shutil
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console

from retrieval.context import CONTEXT_FORMAT_VERSION
from retrieval.embedder import cpu_has_bf16
from retrieval.errors import ConflictError, RagtuneError
from retrieval.types import NAME_PATTERN
from training.adapters import (
    CONFIG_FILE,
    MANIFEST,
    RUNS_DIR,
    VLLM_LORA_RANKS,
    inspect_adapter,
)
from training.data import fingerprint, load_examples, tokenize_examples
from training.loss import assistant_loss
from training.loss import collate as collate_labelled
from training.models import ModelError, check_model_dir, model_fingerprint
from training.settings import TrainingSettings

NAME_RE = re.compile(NAME_PATTERN)
METRICS_FILE = "metrics.jsonl"
RUN_STATE = "run.json"


class TrainError(RagtuneError):
    """A run cannot start or resume; the message says which flag or file to change."""

    code = "training_error"


class AdapterExists(ConflictError):
    code = "adapter_exists"


@dataclass(frozen=True)
class Hardware:
    device: str  # "cuda" or "cpu"
    precision: str  # "bf16", "fp16" or "fp32"


def pick_hardware(precision: str) -> Hardware:
    import torch

    if torch.cuda.is_available():
        if precision == "auto":
            precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return Hardware("cuda", precision)
    if precision == "fp16":
        raise TrainError("--precision fp16 needs a GPU; use bf16 or fp32 on CPU", param="precision")
    if precision == "auto":
        precision = "bf16" if cpu_has_bf16() else "fp32"
    return Hardware("cpu", precision)


def ragtune_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ragtune")
    except PackageNotFoundError:
        return "0+unknown"


def peak_memory_mb(device: str) -> float:
    """Peak resident memory of this process (CPU) or peak allocated GPU memory (CUDA)."""
    if device == "cuda":
        import torch

        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


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


@dataclass
class Fitted:
    """A finished fit: the trained model and its numbers."""

    model: Any
    steps: int
    epochs_done: float
    losses: list[float]
    training_loss: float
    runtime: float
    eval_start: float | None
    eval_end: float | None


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
    state = {
        "data_fingerprint": prep.data_fp,
        "base_fingerprint": model_fingerprint(base_model),
        "settings": s.model_dump(),
        "collection": collection,
    }
    run_dir, checkpoint = _run_folder(adapters_dir / RUNS_DIR / name, name, state, resume, console)
    model = _lora_model(base_model, s, prep.hw)
    fit = _fit(model, tokenizer, train_set, eval_set, run_dir, checkpoint, s, prep.hw, epochs, console,
               progress=progress, name=name)  # fmt: skip

    resumed_step = int(checkpoint.name.split("-")[-1]) if checkpoint else 0
    session_epochs = fit.epochs_done * (fit.steps - resumed_step) / max(fit.steps, 1)
    train_metrics = {
        "train_loss": fit.training_loss,
        "first_logged_loss": fit.losses[0] if fit.losses else None,
        "last_logged_loss": fit.losses[-1] if fit.losses else None,
        "steps": fit.steps,
        "epochs": round(fit.epochs_done, 3),
        "examples": len(train_set.rows),
        "tokens": train_set.tokens,
        "label_tokens": train_set.label_tokens,
        "truncated": train_set.truncated,
        "skipped": train_set.skipped,
        "train_runtime_s": round(fit.runtime, 2),
        # Tokens of the examples seen in this session (padding excluded); exact over whole epochs.
        "tokens_per_second": round(train_set.tokens * session_epochs / max(fit.runtime, 1e-9), 1),
        "peak_memory_mb": round(peak_memory_mb(prep.hw.device), 1),
        "device": prep.hw.device,
        "precision": prep.hw.precision,
        "resumed_from": checkpoint.name if checkpoint else None,
        "wall_s": None,
    }
    if prep.raft_stats is not None:
        train_metrics["context"] = vars(prep.raft_stats)
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
        message = (
            f"the adapter did not learn: eval loss {fit.eval_end:.3f} is not clearly below the base model's "
            f"{fit.eval_start:.3f} (needs {MIN_IMPROVEMENT:.0%} lower). Try more --epochs, a higher --lr, or "
            "more data"
        )
        if s.strict:
            raise TrainError(f"{message}; adapters/{name} was not written (--strict)", param="epochs")
        console.print(f"[bold yellow]WARNING:[/] {message}", highlight=False)

    train_metrics["wall_s"] = round(time.time() - started, 1)
    config = {
        "data": str(data),
        "name": name,
        "base_model": str(base_model),
        "collection": collection,
        "training": s.model_dump(),
        "hardware": vars(prep.hw),
        "retrieval": retrieval_settings.model_dump() if collection and retrieval_settings else None,
    }
    manifest = {
        "name": name,
        "base_model": str(base_model),
        "base_model_name": base_model.name,
        "base_fingerprint": model_fingerprint(base_model),
        "rank": s.rank,
        "alpha": s.alpha,
        "target_modules": sorted(s.target_modules),
        "data": str(data),
        "data_fingerprint": prep.data_fp,
        "collection": collection,
        "context_format_version": CONTEXT_FORMAT_VERSION,
        "train_metrics": train_metrics,
        "eval_metrics": eval_metrics,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "ragtune_version": ragtune_version(),
    }
    _write_adapter(fit.model, prep.dest, base_model, run_dir, config, manifest)
    shutil.rmtree(run_dir, ignore_errors=True)  # the adapter holds the metrics; checkpoints are spent
    console.print(
        f"[green]adapter written:[/] {prep.dest}  train loss {fit.training_loss:.3f}"
        + (f", eval loss {fit.eval_start:.3f} -> {fit.eval_end:.3f}" if fit.eval_start is not None else "")
        + (f", eval loss {fit.eval_end:.3f}" if fit.eval_start is None and fit.eval_end is not None else "")
    )
    return prep.dest


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
        from retrieval import Library
        from training.raft import add_context

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


def _lora_model(base_model: Path, s: TrainingSettings, hw: Hardware) -> Any:
    """The base in the training precision, LoRA on the target modules."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(s.seed)
    # The frozen base is held in bf16 when training in bf16: half the memory and no per-step
    # casts; PEFT keeps the LoRA weights (the only trained ones) in fp32.
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[hw.precision]
    model = AutoModelForCausalLM.from_pretrained(base_model, dtype=dtype)
    model.config.use_cache = False
    lora = LoraConfig(
        r=s.rank,
        lora_alpha=s.alpha,
        lora_dropout=s.dropout,
        target_modules=list(s.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
    try:
        return get_peft_model(model, lora)
    except ValueError as exc:  # PEFT: "Target modules {...} not found in the base model"
        raise TrainError(f"--target-modules: {exc}", param="target_modules") from None


def _fit(
    model: Any,
    tokenizer: Any,
    train_set: Any,
    eval_set: Any,
    run_dir: Path,
    checkpoint: Path | None,
    s: TrainingSettings,
    hw: Hardware,
    epochs: float,
    console: Console,
    *,
    progress: bool,
    name: str,
) -> Fitted:
    """Train with transformers' Trainer, evaluating before and after and checkpointing every
    save_steps; a diverged loss is an error."""
    import torch
    from datasets import Dataset
    from transformers import PrinterCallback, Trainer, TrainingArguments

    from training.callbacks import Divergence, LogProgress, MetricsLog, RichProgress

    def collate(rows: list[dict[str, list[int]]]) -> dict[str, Any]:
        return collate_labelled(rows, tokenizer.pad_token_id)

    has_eval = bool(eval_set.rows)
    args = TrainingArguments(
        output_dir=str(run_dir),
        num_train_epochs=epochs,
        max_steps=s.max_steps,
        per_device_train_batch_size=s.batch_size,
        per_device_eval_batch_size=s.batch_size,
        gradient_accumulation_steps=s.grad_accum,
        learning_rate=s.lr,
        lr_scheduler_type="cosine",
        warmup_steps=0.03,
        weight_decay=0.0,
        logging_steps=s.logging_steps,
        logging_first_step=True,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=s.eval_steps,
        save_strategy="steps",
        save_steps=s.save_steps,
        save_total_limit=2,
        bf16=hw.precision == "bf16",
        fp16=hw.precision == "fp16",
        use_cpu=hw.device == "cpu",
        train_sampling_strategy="group_by_length" if s.group_by_length else "random",
        remove_unused_columns=False,
        label_names=["labels"],
        report_to="none",
        disable_tqdm=True,
        dataloader_pin_memory=hw.device == "cuda",
        seed=s.seed,
        data_seed=s.seed,
    )
    divergence = Divergence()
    callbacks: list[Any] = [MetricsLog(run_dir / METRICS_FILE), divergence]
    if progress:
        # A bar on a terminal; one plain line per logging step in a log file or a pipe.
        callbacks.append(RichProgress(console) if console.is_terminal else LogProgress(console))
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(train_set.rows),
        eval_dataset=Dataset.from_list(eval_set.rows) if has_eval else None,
        data_collator=collate,
        compute_loss_func=assistant_loss,  # vocabulary logits only where a label is (training/loss.py)
        callbacks=callbacks,
    )
    trainer.remove_callback(PrinterCallback)  # it prints raw dicts; the bar and metrics.jsonl replace it
    eval_start = None
    threads = torch.get_num_threads()
    if s.threads:
        torch.set_num_threads(s.threads)
    try:
        if has_eval and checkpoint is None:
            eval_start = trainer.evaluate()["eval_loss"]
        result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
        last = trainer.state.log_history[-2:] if has_eval else []
        done = [
            h["eval_loss"] for h in last if "eval_loss" in h and h.get("step") == trainer.state.global_step
        ]
        eval_end = (done[0] if done else trainer.evaluate()["eval_loss"]) if has_eval else None
    finally:
        torch.set_num_threads(threads)
    if divergence.step is not None:
        raise TrainError(
            f"training diverged: the loss became {divergence.value} at step {divergence.step}; "
            f"adapters/{name} was not written. Lower --lr (now {s.lr:g}) or check the data",
            param="lr",
        )
    return Fitted(
        model=model,
        steps=trainer.state.global_step,
        epochs_done=trainer.state.epoch or 0.0,
        losses=[h["loss"] for h in trainer.state.log_history if "loss" in h],
        training_loss=result.training_loss,
        runtime=result.metrics["train_runtime"],
        eval_start=eval_start,
        eval_end=eval_end,
    )


def _write_adapter(
    model: Any, dest: Path, base_model: Path, run_dir: Path, config: dict[str, Any], manifest: dict[str, Any]
) -> None:
    """PEFT files, metrics, config and manifest in a temporary folder, checked as the server
    would check them, then swapped into place: a crash never leaves half an adapter."""
    adapters_dir, name = dest.parent, dest.name
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=adapters_dir))
    try:
        model.save_pretrained(tmp)
        cfg_path = tmp / "adapter_config.json"
        peft_cfg = json.loads(cfg_path.read_text())
        peft_cfg["base_model_name_or_path"] = str(base_model)
        cfg_path.write_text(json.dumps(peft_cfg, indent=2))
        (tmp / "README.md").unlink(missing_ok=True)
        if (run_dir / METRICS_FILE).exists():
            shutil.copy(run_dir / METRICS_FILE, tmp / METRICS_FILE)
        (tmp / CONFIG_FILE).write_text(yaml.safe_dump(config, sort_keys=False))
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
        tmp.chmod(0o755)
        inspect_adapter(tmp, base_model_path=base_model, max_lora_rank=max(VLLM_LORA_RANKS))
        old = None
        if dest.exists():
            old = adapters_dir / f".{name}.old-{int(time.time())}"
            dest.rename(old)
        tmp.rename(dest)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def show_samples(
    model: Any, tokenizer: Any, examples: list[Any], count: int, console: Console, *, held_out: bool
) -> None:
    """Print a few greedy generations of the trained model beside the expected replies."""
    from training.evaluate import generate

    picked = [ex for ex in examples if ex.messages and ex.messages[-1]["role"] == "assistant"][:count]
    if not picked:
        return
    was_training = model.training
    model.eval()
    try:
        replies = generate(model, tokenizer, [ex.messages[:-1] for ex in picked], max_new_tokens=64)
    finally:
        model.train(was_training)
    kind = "held-out" if held_out else "training (no eval split)"
    console.print(f"[bold]{len(picked)} {kind} examples, greedy:[/]")
    for ex, reply in zip(picked, replies, strict=True):
        question = ex.messages[-2]["content"] if len(ex.messages) > 1 else ""
        tail = question.rsplit("Question:", 1)[-1].strip()
        console.print(f"  prompt  : {tail[-160:]}", highlight=False, soft_wrap=True)
        console.print(f"  expected: {ex.messages[-1]['content'][:200]}", highlight=False, soft_wrap=True)
        console.print(f"  got     : {reply[:200]}", highlight=False, soft_wrap=True)
