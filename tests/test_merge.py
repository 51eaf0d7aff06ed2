"""An adapter merged into the base weights, and the corrections that serve the rest exactly
(core/merge.py): checked in transformers, logits against logits, no engine."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from ragtune.core.adapters import inspect_adapter
from ragtune.core.merge import MANIFEST, correction, merge_adapter
from ragtune.serving.app import create_app
from ragtune.serving.engine import AdapterRef
from ragtune.serving.settings import load_settings
from tests.conftest import make_lora_adapter
from tests.doubles import EchoEngine

PROMPT = "The capital of France is Paris, and the capital of Spain is"


@pytest.fixture(scope="module")
def two_adapters(tmp_path_factory: pytest.TempPathFactory, base_model: Path):
    root = tmp_path_factory.mktemp("merge-adapters")
    a = make_lora_adapter(base_model, root / "domain", seed=11, rank=8)
    x = make_lora_adapter(base_model, root / "other", seed=12, rank=16)
    info = [inspect_adapter(p, base_model_path=base_model, max_lora_rank=64) for p in (a, x)]
    return info[0], info[1], tmp_path_factory.mktemp("merged")


def _logits(model_dir: Path, adapter: Path | None = None):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter)
    with torch.no_grad():
        return model(**tok(PROMPT, return_tensors="pt")).logits[0]


def _close(got, want) -> None:
    import torch

    # bf16 weights (the base's own dtype) round the merged sum: compare at that precision, and
    # require the next token everywhere.
    assert torch.equal(got.argmax(-1), want.argmax(-1))
    assert (got - want).abs().max().item() < 0.05 * want.abs().max().item()


def test_merged_model_answers_as_base_plus_adapter(base_model: Path, two_adapters) -> None:
    domain, _, root = two_adapters
    merged = merge_adapter(base_model, domain, root)
    manifest = json.loads((merged / MANIFEST).read_text())
    assert manifest["adapter_fingerprint"] == domain.fingerprint
    assert (merged / "tokenizer.json").is_file()
    want = _logits(base_model, domain.path)
    _close(_logits(merged), want)
    # the adapter moves the output: the check above could not pass on the bare base
    assert not (_logits(base_model) - want).abs().max().item() < 0.05 * want.abs().max().item()


def test_corrections_serve_the_base_and_other_adapters(base_model: Path, two_adapters) -> None:
    domain, other, root = two_adapters
    merged = merge_adapter(base_model, domain, root)
    to_base = correction(merged, domain, None)
    _close(_logits(merged, to_base), _logits(base_model))
    to_other = correction(merged, domain, other)
    cfg = json.loads((to_other / "adapter_config.json").read_text())
    assert cfg["r"] == domain.rank + other.rank and cfg["lora_alpha"] == cfg["r"]
    _close(_logits(merged, to_other), _logits(base_model, other.path))


def test_merge_is_built_once_and_never_half_written(base_model: Path, two_adapters, monkeypatch) -> None:
    domain, _, root = two_adapters
    first = merge_adapter(base_model, domain, root)
    stamp = (first / MANIFEST).stat().st_mtime_ns
    assert merge_adapter(base_model, domain, root) == first
    assert (first / MANIFEST).stat().st_mtime_ns == stamp  # reused, not rebuilt

    import ragtune.core.merge as merge

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(merge, "_write_lora", broken)
    with pytest.raises(OSError, match="disk full"):
        correction(first, domain, replace(two_adapters[1], fingerprint="f" * 16))
    leftovers = [p.name for p in (first / "corrections").iterdir()]
    assert all(not name.startswith(".") for name in leftovers)
    assert f"other-{'f' * 12}" not in leftovers


class RecordingEngine(EchoEngine):
    """The echo engine, noting which adapter (None: none) each generation ran on."""

    def __init__(self, tokenizer: Any):
        super().__init__(tokenizer)
        self.used: list[AdapterRef | None] = []

    async def generate(self, prompt_ids, options, request_id, adapter):  # type: ignore[no-untyped-def]
        self.used.append(adapter)
        async for delta in super().generate(prompt_ids, options, request_id, adapter):
            yield delta


@pytest.fixture
def merged_server(tmp_path: Path, base_model: Path, two_adapters, monkeypatch: pytest.MonkeyPatch):
    """`with merged_server(lora=...) as (client, engine)`: the real app, `domain` merged."""
    from transformers import AutoTokenizer

    domain, other, _ = two_adapters
    monkeypatch.chdir(tmp_path)
    adapters = tmp_path / "adapters"
    for info in (domain, other):
        shutil.copytree(info.path, adapters / info.path.name)
    tokenizer = AutoTokenizer.from_pretrained(base_model)

    @contextmanager
    def start(*, lora: bool = True, merge: bool = True) -> Iterator[tuple[TestClient, RecordingEngine]]:
        settings = load_settings(
            models_dir=base_model.parent,
            adapters_dir=adapters,
            indexes_dir=tmp_path / "indexes",
            engine={"enable_lora": lora},
            serving={"adapters": {"domain": "domain"}, "merge": "domain" if merge else None},
        )
        settings = settings.model_copy(update={"models_dir": tmp_path / "models"})  # merged/ goes here
        settings = settings.model_copy(update={"base_model": str(base_model)})
        engine = RecordingEngine(tokenizer)
        with TestClient(create_app(settings, engine=engine)) as client:
            yield client, engine

    return start


def _ask(client: TestClient, model: str) -> Any:
    return client.post(
        "/v1/chat/completions",
        json={"model": model, "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]},
    )


def test_merged_domain_runs_without_lora_and_the_rest_through_corrections(merged_server) -> None:
    with merged_server() as (client, engine):
        listed = {a["name"]: a["merged"] for a in client.get("/v1/adapters").json()["data"]}
        assert listed == {"domain": True}
        assert _ask(client, "domain").status_code == 200
        assert engine.used[-1] is None  # the merged weights, no LoRA
        assert _ask(client, "smollm2-135m-instruct").status_code == 200
        base = engine.used[-1]
        assert base is not None and base.engine_path is not None
        assert base.engine_path.parent.name == "corrections" and base.engine_path.name == "base"

        loaded = client.post("/v1/adapters", json={"name": "other", "path": "other"})
        assert loaded.status_code == 201, loaded.text
        assert _ask(client, "other").status_code == 200
        other = engine.used[-1]
        assert other is not None and other.engine_path is not None
        assert other.path.name == "other" and other.engine_path.name.startswith("other-")
        cfg = json.loads((other.engine_path / "adapter_config.json").read_text())
        assert cfg["r"] == 8 + 16  # the merged adapter's rank plus its own

        for reply in (
            client.post("/v1/adapters", json={"name": "domain", "path": "other"}),
            client.delete("/v1/adapters/domain"),
        ):
            assert reply.status_code == 409 and reply.json()["error"]["code"] == "adapter_merged"
        assert _ask(client, "domain").status_code == 200 and engine.used[-1] is None


def test_merged_with_lora_off_serves_only_the_merged_domain(merged_server) -> None:
    with merged_server(lora=False) as (client, engine):
        assert _ask(client, "domain").status_code == 200 and engine.used[-1] is None
        reply = _ask(client, "smollm2-135m-instruct")
        assert reply.status_code == 400, reply.text
        error = reply.json()["error"]
        assert error["code"] == "model_not_served" and "LoRA off" in error["message"]
        loaded = client.post("/v1/adapters", json={"name": "other", "path": "other"})
        assert loaded.status_code == 400 and loaded.json()["error"]["code"] == "model_not_served"


def test_merge_of_a_missing_adapter_fails_the_start_naming_it(merged_server, tmp_path: Path) -> None:
    from ragtune.serving.merged import MergeError

    shutil.rmtree(tmp_path / "adapters" / "domain")
    with pytest.raises(MergeError, match="--merge 'domain'"), merged_server():
        pass


def test_a_stored_record_of_the_merged_adapter_waits_for_a_restart(merged_server) -> None:
    """An adapter loaded over HTTP is recorded in the store and reloaded at start; under that
    name another version is now merged into the weights: the start goes on, serving the merged."""
    with merged_server(merge=False) as (client, _):
        replaced = client.post("/v1/adapters", json={"name": "domain", "path": "other"})
        assert replaced.status_code == 200, replaced.text
    with merged_server() as (client, engine):
        listed = {a["name"]: a["merged"] for a in client.get("/v1/adapters").json()["data"]}
        assert listed == {"domain": True}
        assert _ask(client, "domain").status_code == 200 and engine.used[-1] is None
