"""The model side of a training run: the base wrapped with LoRA, and the fit with transformers'
Trainer (evaluated before and after, checkpointed, stopped on a diverged loss)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from ragtune.core.cpu import cpu_has_bf16
from ragtune.core.errors import RagtuneError
from ragtune.training.loss import assistant_loss
from ragtune.training.loss import collate as collate_labelled
from ragtune.training.settings import TrainingSettings

METRICS_FILE = "metrics.jsonl"


class TrainError(RagtuneError):
    """A run cannot start or resume; the message says which flag or file to change."""

    code = "training_error"


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


def lora_model(base_model: Path, s: TrainingSettings, hw: Hardware) -> Any:
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
    depth = int(model.config.num_hidden_layers)
    if s.layers is not None and s.layers > depth:
        raise TrainError(f"--layers {s.layers}: the base model has {depth} decoder layers", param="layers")
    lora = LoraConfig(
        layers_to_transform=list(range(depth - s.layers, depth)) if s.layers else None,
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


def fit_model(
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
    from transformers import PrinterCallback, Trainer

    from ragtune.training.callbacks import Divergence, LogProgress, MetricsLog, RichProgress

    def collate(rows: list[dict[str, list[int]]]) -> dict[str, Any]:
        return collate_labelled(rows, tokenizer.pad_token_id)

    has_eval = bool(eval_set.rows)
    args = _arguments(run_dir, s, hw, epochs, has_eval=has_eval)
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


def _arguments(run_dir: Path, s: TrainingSettings, hw: Hardware, epochs: float, *, has_eval: bool) -> Any:
    """The Trainer's arguments from the settings (steps, batches, precision, checkpoints): a
    cosine learning rate, and no reporting of its own (the callbacks report)."""
    from transformers import TrainingArguments

    return TrainingArguments(
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


def show_samples(
    model: Any, tokenizer: Any, examples: list[Any], count: int, console: Console, *, held_out: bool
) -> None:
    """Print a few greedy generations of the trained model beside the expected replies."""
    from ragtune.training.generate import generate

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
