"""The two servers of the serving benchmark, started as subprocesses on loopback ports.

Both get the engine arguments of ragtune's `EngineSettings` defaults, so the only difference
left is the server in front of the engine: ragtune's FastAPI app vs vLLM's own OpenAI server.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from ragtune.serving.engine import resolved_block_size, resolved_dtype, resolved_executor, speculative_config
from ragtune.serving.settings import EngineSettings

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def engine_flags(engine: EngineSettings) -> list[str]:
    """vLLM OpenAI-server flags equal to ragtune's engine settings."""
    return [
        "--dtype", resolved_dtype(engine.dtype),
        "--max-model-len", str(engine.max_model_len),
        "--max-num-seqs", str(engine.max_num_seqs),
        "--seed", str(engine.seed),
        "--enable-lora",
        "--max-loras", str(engine.max_loras),
        "--max-lora-rank", str(engine.max_lora_rank),
        "--max-cpu-loras", str(engine.max_cpu_loras),
        *(["--block-size", str(block)] if (block := resolved_block_size(engine.block_size)) else []),
        *(["--distributed-executor-backend", executor] if (executor := resolved_executor(engine)) else []),
        *(["--speculative-config", json.dumps(spec)] if (spec := speculative_config(engine)) else []),
    ]  # fmt: skip


KV_CACHE_GIB = 2  # VLLM_CPU_KVCACHE_SPACE for both servers


def base_env() -> dict[str, str]:
    return {
        **os.environ,
        "VLLM_CPU_KVCACHE_SPACE": str(KV_CACHE_GIB),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }


@dataclass
class Server:
    """One server subprocess in its own process group (so the engine core goes down with it)."""

    kind: str  # "raw" | "ragtune"
    cmd: list[str]
    env: dict[str, str]
    log: Path
    cwd: Path
    port: int
    model: str  # the name requests use in `model`
    proc: subprocess.Popen[bytes] | None = None
    start_s: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, *, timeout: float = 300.0) -> None:
        started = time.perf_counter()
        with self.log.open("a") as fh:
            self.proc = subprocess.Popen(
                self.cmd, stdout=fh, stderr=subprocess.STDOUT, env=self.env, cwd=self.cwd,
                start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.kind} server exited with {self.proc.returncode}: {' '.join(self.cmd)}\n"
                    + self.log.read_text()[-3000:]
                )
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.kind} server not healthy after {timeout:.0f} s; log: {self.log}")
            time.sleep(1)
        self.start_s = round(time.perf_counter() - started, 1)

    def stop(self) -> None:
        """SIGTERM the process group, wait until every member is gone (engine workers too)."""
        if self.proc is None:
            return
        pgid = self.proc.pid
        _signal_group(pgid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while _group_alive(pgid) and time.monotonic() < deadline:
            self.proc.poll()
            time.sleep(0.5)
        if _group_alive(pgid):
            _signal_group(pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
        self.proc = None

    def cpu_seconds(self) -> dict[str, float]:
        """CPU time (user + system) so far of the API process and of its engine processes."""
        import psutil

        if self.proc is None:
            return {}
        try:
            main = psutil.Process(self.proc.pid)
            api = sum(main.cpu_times()[:2])
            engine = 0.0
            for child in main.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    engine += sum(child.cpu_times()[:2])
        except psutil.Error:
            return {}
        return {"api": api, "engine": engine}

    def __enter__(self) -> Server:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def raw_vllm(
    model_dir: Path,
    engine: EngineSettings,
    *,
    workdir: Path,
    model_name: str,
    multiprocessing: bool | None = None,
    label: str = "raw-vllm",
) -> Server:
    """vLLM's OpenAI server. `multiprocessing`: VLLM_ENABLE_V1_MULTIPROCESSING (False puts the
    engine core inside the API process); None: off with the `uni` executor (which vllm-cpu
    otherwise turns into `mp`), vLLM's default (on) with any other."""
    port = free_port()
    cmd = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(model_dir), "--served-model-name", model_name,
        "--host", "127.0.0.1", "--port", str(port), *engine_flags(engine),
    ]  # fmt: skip
    env = {**base_env(), "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}
    if multiprocessing is None:
        multiprocessing = resolved_executor(engine) != "uni"
    env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "1" if multiprocessing else "0"
    return Server("raw", cmd, env, workdir / f"{label}.log", REPO, port, model_name)


def ragtune(
    models_dir: Path, *, workdir: Path, adapters_dir: Path, indexes_dir: Path, model_name: str
) -> Server:
    port = free_port()
    cmd = [sys.executable, "-m", "ragtune", "serve", "--host", "127.0.0.1", "--port", str(port)]
    env = {
        **base_env(),
        "RAGTUNE_MODELS_DIR": str(models_dir),
        "RAGTUNE_ADAPTERS_DIR": str(adapters_dir),
        "RAGTUNE_INDEXES_DIR": str(indexes_dir),
    }
    # cwd is the work folder, so no ragtune.yaml lying in the repository is picked up.
    return Server("ragtune", cmd, env, workdir / "ragtune.log", workdir, port, model_name)
