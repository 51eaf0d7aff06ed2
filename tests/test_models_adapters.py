"""Adapters trained for another base model are listed as unavailable, with the reason, never as
damaged and never silently dropped (`ragtune --base-model X adapters list`, `list_adapters`)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from ragtune.core.adapters import BaseModelMismatch, Unavailable, inspect_adapter, list_adapters
from tests.conftest import make_lora_adapter


@pytest.fixture(scope="module")
def adapters(base_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("adapters")
    make_lora_adapter(base_model, root / "style", seed=1)
    return root


def _other_base(root: Path) -> Path:
    """A model folder of another shape: layer 0's q_proj and v_proj are 16 x 16."""
    from safetensors.numpy import save_file

    root.mkdir(parents=True)
    (root / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 16}))
    (root / "tokenizer_config.json").write_text("{}")
    (root / "tokenizer.json").write_text("{}")
    weights = {
        f"model.layers.0.self_attn.{m}.weight": np.zeros((16, 16), dtype=np.float32)
        for m in ("q_proj", "v_proj")
    }
    save_file(weights, str(root / "model.safetensors"))
    return root


def test_adapter_of_another_base_is_unavailable_not_damaged(adapters: Path, base_model: Path, tmp_path: Path):
    other = _other_base(tmp_path / "other-base")
    # Its LoRA shapes do not fit this base either: the base it was trained on is named first.
    with pytest.raises(BaseModelMismatch, match=r"trained on base model 'smollm2-135m-instruct'"):
        inspect_adapter(adapters / "style", base_model_path=other, max_lora_rank=64)
    found = dict(list_adapters(adapters, base_model_path=other))
    assert isinstance(found["style"], Unavailable)
    assert found["style"].trained_on == "smollm2-135m-instruct"
    assert "serve it with its own base or retrain it" in found["style"].reason
    # With its own base it is served.
    assert dict(list_adapters(adapters, base_model_path=base_model))["style"].rank == 8  # type: ignore[union-attr]


def test_damaged_adapter_of_this_base_is_still_invalid(adapters: Path, base_model: Path, tmp_path: Path):
    broken = tmp_path / "adapters" / "broken"
    shutil.copytree(adapters / "style", broken)
    (broken / "adapter_model.safetensors").write_bytes(b"\0" * 16)
    found = dict(list_adapters(broken.parent, base_model_path=base_model))
    assert isinstance(found["broken"], str) and "corrupt" in found["broken"]


def test_cli_lists_the_adapter_as_unavailable_with_the_reason(
    adapters: Path, base_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    from ragtune.cli import app

    other = _other_base(tmp_path / "other-base")
    monkeypatch.chdir(tmp_path)
    env = {"RAGTUNE_ADAPTERS_DIR": str(adapters), "COLUMNS": "300"}
    result = CliRunner().invoke(app, ["--base-model", str(other), "adapters", "list"], env=env)
    assert result.exit_code == 0, result.output
    assert "unavailable with other-base" in result.output and "smollm2-135m-instruct" in result.output
    result = CliRunner().invoke(app, ["--base-model", str(base_model), "adapters", "list"], env=env)
    assert "ok" in result.output and "unavailable" not in result.output
