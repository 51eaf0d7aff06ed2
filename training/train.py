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

from ragtune.core.adapters import (
    CONFIG_FILE,
    MANIFEST,
    RUNS_DIR,
    VLLM_LORA_RANKS,
    inspect_adapter,
)
from ragtune.core.errors import ConflictError
from ragtune.core.models import ModelError, check_model_dir, model_fingerprint
from ragtune.core.names import NAME_PATTERN
from ragtune.core.prompt import CONTEXT_FORMAT_VERSION
from ragtune.training.data import fingerprint, load_examples, tokenize_examples
from ragtune.training.fit import (
    METRICS_FILE,
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
    model = lora_model(base_model, s, prep.hw)
    fit = fit_model(model, tokenizer, train_set, eval_set, run_dir, checkpoint, s, prep.hw, epochs, console,
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
        "layers": s.layers,
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
