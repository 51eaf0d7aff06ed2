"""The training commands through the real `ragtune` CLI: clear errors and exit code 2."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from ragtune.cli import app

FIXTURES = Path(__file__).parent / "fixtures" / "training"


@pytest.fixture
def env(tmp_path: Path, base_model: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("RAGTUNE_ADAPTERS_DIR", str(tmp_path / "adapters"))
    monkeypatch.setenv("RAGTUNE_BASE_MODEL", str(base_model))
    return tmp_path / "adapters"


def run(*args: str):
    return CliRunner().invoke(app, list(args))


def test_bad_data_exits_2_naming_the_lines(env: Path):
    result = run("train", "--data", str(FIXTURES / "bad.jsonl"), "--name", "x")
    assert result.exit_code == 2
    assert "bad.jsonl line 5: invalid JSON" in result.output


def test_existing_adapter_name_exits_2(env: Path):
    (env / "taken").mkdir(parents=True)
    result = run("train", "--data", str(FIXTURES / "tiny.jsonl"), "--name", "taken")
    assert result.exit_code == 2 and "--overwrite" in result.output


def test_bad_flag_values_name_the_flag(env: Path):
    result = run("train", "--data", str(FIXTURES / "tiny.jsonl"), "--name", "x", "--too-long", "drop")
    assert result.exit_code == 2 and "--too-long" in result.output


def test_adapters_list_and_validate_report_problems(env: Path):
    assert "no adapters" in run("adapters", "list").output
    (env / "half").mkdir(parents=True)
    listed = run("adapters", "list")
    assert listed.exit_code == 0 and "adapter_config.json is missing" in listed.output.replace("\n", "")
    result = run("adapters", "validate", "half", "--no-engine")
    assert result.exit_code == 2 and "adapter_config.json is missing" in result.output


def test_reader_data_has_one_set_of_defaults(env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """`ragtune data reader` without flags asks for what training/reader.py does by default, and
    `make reader-adapter` passes no mix of its own: READER_DEFAULTS is the one set."""
    import inspect
    from dataclasses import asdict

    import typer

    from ragtune.serving.settings import load_settings
    from ragtune.training import reader
    from ragtune.training.cli import data_app

    asked: dict[str, object] = {}

    def record(dataset: Path, out: Path, **kw: object) -> reader.ReaderStats:
        asked.update(kw)
        return reader.ReaderStats()

    for fn in (reader.build_reader_examples, reader.write_reader_data):
        assert inspect.signature(fn).parameters["mix"].default is reader.READER_DEFAULTS
    monkeypatch.setattr(reader, "write_reader_data", record)
    root = typer.Typer()
    root.add_typer(data_app, name="data")
    args = ["data", "reader", "--dataset", str(tmp_path), "--out", str(tmp_path / "r.jsonl")]
    result = CliRunner().invoke(root, args, obj=load_settings())
    assert result.exit_code == 0, result.output
    assert asked["mix"] == reader.READER_DEFAULTS  # the CLI's defaults are the same values
    assert asdict(asked["mix"]) == asdict(reader.ReaderMix())
    makefile = (Path(__file__).parents[1] / "Makefile").read_text()
    recipe = makefile.split("\nreader-adapter:")[1].split("\n\n")[0]
    assert "ragtune data reader" in recipe and "--p-" not in recipe and "--top-k" not in recipe
