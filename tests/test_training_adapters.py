"""inspect_adapter: a trained adapter passes; each way an adapter folder can be broken is caught."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import pytest

from ragtune.core.adapters import AdapterError, adapter_fingerprint, inspect_adapter, list_adapters
from ragtune.core.packing import pack_adapter, unpack_adapter
from ragtune.training.settings import TrainingSettings
from ragtune.training.train import train

FIXTURES = Path(__file__).parent / "fixtures" / "training"


@pytest.fixture(scope="module")
def trained(base_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One real (one-step) adapter trained by ragtune, copied by each test before it is broken."""
    adapters = tmp_path_factory.mktemp("adapters")
    settings = TrainingSettings(
        rank=8, alpha=16, max_steps=1, batch_size=2, max_seq_len=64, eval_split=0, threads=1
    )
    return train(
        FIXTURES / "tiny.jsonl",
        "ok",
        base_model=base_model,
        adapters_dir=adapters,
        settings=settings,
        progress=False,
    )


@pytest.fixture
def adapter(trained: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "adapters" / "broken"
    shutil.copytree(trained, dest)
    return dest


def edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def check(path: Path, base: Path, max_lora_rank: int = 64):
    return inspect_adapter(path, base_model_path=base, max_lora_rank=max_lora_rank)


def test_a_trained_adapter_passes(trained: Path, base_model: Path):
    info = check(trained, base_model)
    assert (info.name, info.rank, info.alpha, info.base_model_name) == ("ok", 8, 16, base_model.name)
    assert "q_proj" in info.target_modules and info.manifest["context_format_version"] == 1
    assert set(info.manifest) >= {
        "name",
        "base_model",
        "base_model_name",
        "base_fingerprint",
        "rank",
        "alpha",
        "target_modules",
        "data_fingerprint",
        "context_format_version",
        "train_metrics",
        "eval_metrics",
        "created",
        "ragtune_version",
    }
    assert (trained / "training-config.yaml").is_file() and (trained / "metrics.jsonl").is_file()


def test_missing_folder(base_model: Path, tmp_path: Path):
    with pytest.raises(AdapterError, match="does not exist") as err:
        check(tmp_path / "nope", base_model)
    assert (err.value.status_code, err.value.code) == (400, "invalid_adapter")


def test_missing_or_corrupt_config(adapter: Path, base_model: Path):
    (adapter / "adapter_config.json").write_text("{not json")
    with pytest.raises(AdapterError, match="adapter_config.json is corrupt"):
        check(adapter, base_model)
    (adapter / "adapter_config.json").unlink()
    with pytest.raises(AdapterError, match="adapter_config.json is missing"):
        check(adapter, base_model)


def test_not_lora(adapter: Path, base_model: Path):
    edit_json(adapter / "adapter_config.json", peft_type="IA3")
    with pytest.raises(AdapterError, match="only LoRA"):
        check(adapter, base_model)


def test_modules_to_save(adapter: Path, base_model: Path):
    edit_json(adapter / "adapter_config.json", modules_to_save=["lm_head"])
    with pytest.raises(AdapterError, match="modules_to_save"):
        check(adapter, base_model)


def test_rank_above_the_server_limit_or_unsupported(adapter: Path, base_model: Path):
    with pytest.raises(AdapterError, match="exceeds the server's max_lora_rank 1"):
        check(adapter, base_model, max_lora_rank=1)
    edit_json(adapter / "adapter_config.json", r=12)
    with pytest.raises(AdapterError, match="rank 12 is not one vLLM supports"):
        check(adapter, base_model)


def test_missing_truncated_or_garbage_weights(adapter: Path, base_model: Path):
    weights = adapter / "adapter_model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(AdapterError, match="corrupt.*truncated"):
        check(adapter, base_model)
    weights.write_bytes(b"\xff" * 64)
    with pytest.raises(AdapterError, match="unreadable or corrupt"):
        check(adapter, base_model)
    weights.unlink()
    with pytest.raises(AdapterError, match="adapter_model.safetensors is missing"):
        check(adapter, base_model)


def test_target_modules_absent_from_the_base(adapter: Path, base_model: Path):
    edit_json(adapter / "adapter_config.json", target_modules=["q_proj", "c_attn"])
    with pytest.raises(AdapterError, match=r"target modules \['c_attn'\] do not exist"):
        check(adapter, base_model)


def test_base_model_mismatch_by_fingerprint(adapter: Path, base_model: Path):
    edit_json(adapter / "ragtune-adapter.json", base_fingerprint="0000000000000000", base_model_name="other")
    with pytest.raises(AdapterError, match="was trained on base model 'other'"):
        check(adapter, base_model)


def test_base_model_mismatch_without_a_manifest(adapter: Path, base_model: Path):
    (adapter / "ragtune-adapter.json").unlink()
    assert check(adapter, base_model).manifest is None  # a plain PEFT folder for the same base is fine
    edit_json(adapter / "adapter_config.json", base_model_name_or_path="/somewhere/Qwen2-0.5B")
    with pytest.raises(AdapterError, match="declares base model 'Qwen2-0.5B'"):
        check(adapter, base_model)


def test_corrupt_manifest(adapter: Path, base_model: Path):
    (adapter / "ragtune-adapter.json").write_text("[1, 2")
    with pytest.raises(AdapterError, match="ragtune-adapter.json is corrupt"):
        check(adapter, base_model)


def test_list_adapters_reports_each_folder(adapter: Path, trained: Path, base_model: Path):
    shutil.copytree(trained, adapter.parent / "good")
    (adapter / "adapter_config.json").unlink()
    (adapter.parent / ".good.tmp-123").mkdir()  # a temp folder of a run in progress is not listed
    found = dict(list_adapters(adapter.parent, base_model_path=base_model))
    assert set(found) == {"broken", "good"}
    assert isinstance(found["broken"], str) and "adapter_config.json is missing" in found["broken"]
    assert found["good"].rank == 8


def test_packed_files_unpack_to_the_same_adapter(adapter: Path, tmp_path: Path):
    """What the store keeps for replicas (pack_adapter) unpacks to the same fingerprint."""
    (tmp_path / "secret.txt").write_text("not the adapter's")
    (adapter / "leak.txt").symlink_to(tmp_path / "secret.txt")  # outside the folder: left out
    dest = tmp_path / "elsewhere" / ".store" / "copy"
    unpack_adapter(pack_adapter(adapter), dest)
    assert adapter_fingerprint(dest) == adapter_fingerprint(adapter)
    assert sorted(p.name for p in dest.iterdir()) == sorted(
        p.name for p in adapter.iterdir() if p.name != "leak.txt"
    )
    unpack_adapter(pack_adapter(adapter), dest)  # already there (another process won): kept
    assert adapter_fingerprint(dest) == adapter_fingerprint(adapter)


def test_a_hostile_pack_is_refused_and_leaves_nothing(tmp_path: Path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("../escaped.txt")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"bad"))
    dest = tmp_path / "store" / "copy"
    with pytest.raises(AdapterError, match=f"cannot unpack the adapter's files into {dest}"):
        unpack_adapter(buf.getvalue(), dest)
    assert not (tmp_path / "escaped.txt").exists() and list((tmp_path / "store").iterdir()) == []
    with pytest.raises(AdapterError, match="cannot unpack"):
        unpack_adapter(b"not a tar at all", dest)
