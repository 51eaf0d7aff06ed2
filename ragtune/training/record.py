"""What a finished training run leaves: its metrics, the config that made it and the manifest,
written with the PEFT files into adapters/NAME/ atomically (training.train runs; this records).
"""

from __future__ import annotations

import json
import resource
import shutil
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from ragtune.core.adapters import CONFIG_FILE, MANIFEST, VLLM_LORA_RANKS, inspect_adapter
from ragtune.core.models import model_fingerprint
from ragtune.core.prompt import CONTEXT_FORMAT_VERSION
from ragtune.training.fit import METRICS_FILE, Fitted, Hardware
from ragtune.training.settings import TrainingSettings


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


def train_metrics(
    fit: Fitted, train_set: Any, hw: Hardware, *, checkpoint: Path | None, raft_stats: Any
) -> dict[str, Any]:
    """The run's training numbers (`wall_s` is filled in once the run is over)."""
    resumed_step = int(checkpoint.name.split("-")[-1]) if checkpoint else 0
    session_epochs = fit.epochs_done * (fit.steps - resumed_step) / max(fit.steps, 1)
    metrics = {
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
        "peak_memory_mb": round(peak_memory_mb(hw.device), 1),
        "device": hw.device,
        "precision": hw.precision,
        "resumed_from": checkpoint.name if checkpoint else None,
        "wall_s": None,
    }
    if raft_stats is not None:
        metrics["context"] = vars(raft_stats)
    return metrics


def run_records(
    *,
    data: Path,
    name: str,
    base_model: Path,
    collection: str | None,
    settings: TrainingSettings,
    hw: Hardware,
    data_fp: str,
    retrieval_settings: Any,
    train_metrics: dict[str, Any],
    eval_metrics: dict[str, Any],
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The run's config (training-config.yaml: what made it) and manifest (ragtune-adapter.json:
    what it is, what it serves on, how it scored)."""
    config = {
        "data": str(data),
        "name": name,
        "base_model": str(base_model),
        "collection": collection,
        "training": settings.model_dump(),
        "hardware": vars(hw),
        "retrieval": retrieval_settings.model_dump() if collection and retrieval_settings else None,
    }
    manifest = {
        "name": name,
        "base_model": str(base_model),
        "base_model_name": base_model.name,
        "base_fingerprint": model_fingerprint(base_model),
        "rank": settings.rank,
        "alpha": settings.alpha,
        "target_modules": sorted(settings.target_modules),
        "layers": settings.layers,
        "data": str(data),
        "data_fingerprint": data_fp,
        "collection": collection,
        "context_format_version": CONTEXT_FORMAT_VERSION,
        "train_metrics": train_metrics,
        "eval_metrics": eval_metrics,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "ragtune_version": ragtune_version(),
    }
    return config, manifest


def write_adapter(
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
