"""Hardening against the real engine (issue 10): bad input that only the engine would have caught,
adapters that would poison it, the start-up self-check, and a graceful SIGTERM.

Uses the session's live server, plus one server of its own for SIGTERM (one extra engine start,
about a minute here). The SIGKILL check (no engine process outlives a killed server) runs when
the session's live server is torn down (tests/conftest.py).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import LiveServer

pytestmark = pytest.mark.engine

BASE = "smollm2-135m-instruct"
FRANCE = [{"role": "user", "content": "What is the capital of France?"}]


def base_answer(http: httpx.Client) -> str:
    body = {"model": BASE, "messages": FRANCE, "max_tokens": 12, "temperature": 0}
    resp = http.post("/v1/chat/completions", json=body)
    assert resp.status_code == 200, resp.text
    return str(resp.json()["choices"][0]["message"]["content"])


def test_the_engine_passed_its_self_check_at_start(live_server: LiveServer) -> None:
    log = live_server.log.read_text()
    # dtype `auto`: float32 on CPUs without native bfloat16, bfloat16 where it is native;
    # executor `auto`: the model runs in the engine-core process on a CPU
    passed = (
        r"engine self-check passed \(dtype=(float32|bfloat16), LoRA on, executor uni\): "
        r"'The capital of France is Paris"
    )
    assert re.search(passed, log), log[-2000:]


@pytest.mark.parametrize("stream", [False, True])
def test_what_the_engine_would_refuse_is_a_4xx_first(live_server: LiveServer, stream: bool) -> None:
    http = httpx.Client(base_url=live_server.url, timeout=120)
    chat = {"model": BASE, "messages": FRANCE, "max_tokens": 4, "stream": stream}
    for extra in ({"min_tokens": 8}, {"n": 16, "temperature": 0}, {"seed": 10**30}, {"seed": -(2**70)}):
        resp = http.post("/v1/chat/completions", json={**chat, **extra})
        assert resp.status_code == 400, (extra, resp.text)
        assert resp.json()["error"]["type"] == "invalid_request_error"
    for prompt in ("", [""]):
        resp = http.post("/v1/completions", json={"model": BASE, "prompt": prompt, "stream": stream})
        assert resp.status_code == 400 and resp.json()["error"]["param"] == "prompt"
    for seed in (2**63 - 1, -(2**63)):  # the bounds themselves reach the engine and work
        resp = http.post("/v1/chat/completions", json={**chat, "seed": seed, "temperature": 1})
        assert resp.status_code == 200, resp.text
    assert "Paris" in base_answer(http)


def _copy(root: Path, name: str) -> Path:
    dest = root / name
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(root / "style", dest)
    return dest


def _rewrite(folder: Path, change) -> None:  # noqa: ANN001
    from safetensors.torch import load_file, save_file

    path = folder / "adapter_model.safetensors"
    save_file({k: change(v) for k, v in load_file(path).items()}, path)


def test_poisonous_adapters_are_refused_and_the_base_model_still_answers(
    live_server: LiveServer, base_model: Path
) -> None:
    http = httpx.Client(base_url=live_server.url, timeout=120)
    root = live_server.adapters_dir
    before = base_answer(http)
    assert "Paris" in before

    _rewrite(_copy(root, "nan"), lambda t: t.clone().fill_(float("nan")))
    ff = _copy(root, "all-ff") / "adapter_model.safetensors"
    data = ff.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    ff.write_bytes(data[: 8 + n] + b"\xff" * (len(data) - 8 - n))
    rank = _copy(root, "rank-mismatch") / "adapter_config.json"
    rank.write_text(json.dumps({**json.loads(rank.read_text()), "r": 16}))  # rank-8 tensors
    for name in ("nan", "all-ff", "rank-mismatch"):
        resp = http.post("/v1/adapters", json={"name": name, "path": name})
        assert resp.status_code == 400, resp.text
        assert resp.json()["error"]["code"] == "invalid_adapter" and "engine never saw it" in resp.text
        assert base_answer(http) == before, name

    # Finite but extreme weights pass every check on disk; the canary catches them in the engine.
    _rewrite(_copy(root, "extreme"), lambda t: t * 1e15)
    resp = http.post("/v1/adapters", json={"name": "extreme", "path": "extreme"})
    assert resp.status_code == 422 and resp.json()["error"]["code"] == "adapter_rejected", resp.text
    assert "extreme" not in [m["id"] for m in http.get("/v1/models").json()["data"]]
    assert base_answer(http) == before
    assert http.get("/health").status_code == 200
    # and a good adapter still loads afterwards
    assert http.post("/v1/adapters", json={"name": "after", "path": "style"}).status_code == 201
    assert http.delete("/v1/adapters/after").status_code == 200


def test_chunked_upload_beyond_the_limit_is_413(live_server: LiveServer) -> None:
    def body():  # noqa: ANN202 - 9 MiB with no Content-Length
        yield b'{"documents": [{"id": "big", "text": "'
        for _ in range(9 * 1024):
            yield b"x" * 1024
        yield b'"}]}'

    resp = httpx.post(
        f"{live_server.url}/v1/collections/kb/documents",
        content=body(),
        headers={"content-type": "application/json"},
        timeout=120,
    )
    assert resp.status_code == 413 and resp.json()["error"]["code"] == "request_too_large"


def test_sigterm_finishes_requests_in_flight_saves_and_exits_0(tmp_path: Path, base_model: Path) -> None:
    from tests.conftest import _free_port, _processes_left

    port = _free_port()
    env = {
        **os.environ,
        "RAGTUNE_MODELS_DIR": str(base_model.parent),
        "RAGTUNE_ADAPTERS_DIR": str(tmp_path),
        "RAGTUNE_INDEXES_DIR": str(tmp_path / "indexes"),
        "RAGTUNE_ENGINE__KV_CACHE_GIB": "1",
        "RAGTUNE_ENGINE__MAX_MODEL_LEN": "512",
        "RAGTUNE_SERVING__SHUTDOWN_TIMEOUT_S": "60",
        "VLLM_CPU_KVCACHE_SPACE": "1",
    }
    log = tmp_path / "server.log"
    with log.open("w") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ragtune", "serve", "--port", str(port)],
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=tmp_path,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 300
        while True:
            assert proc.poll() is None, log.read_text()[-3000:]
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.time() < deadline, log.read_text()[-3000:]
            time.sleep(1)
        http = httpx.Client(base_url=url, timeout=120)
        assert http.post("/v1/collections", json={"name": "kb"}).status_code == 201
        doc = {"id": "d", "text": "The lighthouse was built from granite."}
        assert http.post("/v1/collections/kb/documents", json={"documents": [doc]}).status_code == 200
        results: dict[str, httpx.Response] = {}
        body = {"model": BASE, "messages": FRANCE, "max_tokens": 48, "ignore_eos": True, "temperature": 0}
        worker = threading.Thread(
            target=lambda: results.update(r=http.post("/v1/chat/completions", json=body))
        )
        worker.start()
        while not httpx.get(f"{url}/health", timeout=30).json().get("running_requests"):
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)  # the server only: its engine must be stopped by it
        time.sleep(0.5)
        with pytest.raises(httpx.TransportError):  # no longer accepting
            httpx.get(f"{url}/health", timeout=5)
        worker.join(120)
        assert results["r"].status_code == 200
        assert results["r"].json()["usage"]["completion_tokens"] == 48
        assert proc.wait(120) == 0
        assert "Exception ignored" not in log.read_text()  # the engine shut down once, cleanly
        manifest = json.loads((tmp_path / "indexes" / "kb" / "manifest.json").read_text())
        assert manifest["store_version"] >= 1  # the snapshot was flushed on the way out
        assert not _processes_left(proc.pid), "engine processes outlived the server"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
