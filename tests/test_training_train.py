"""ragtune train end to end on a tiny fixture: the loss falls, the adapter is valid, resume works,
an interrupted run leaves the previous adapter untouched, and bad input is refused up front."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from training.adapters import inspect_adapter
from training.models import ModelError
from training.settings import TrainingSettings
from training.train import AdapterExists, TrainError, train

FIXTURES = Path(__file__).parent / "fixtures" / "training"
TINY = FIXTURES / "tiny.jsonl"


def tiny_settings(**changes) -> TrainingSettings:
    """A few steps of r=8 LoRA with a high learning rate: enough to move the loss in seconds."""
    values = dict(
        rank=8,
        alpha=16,
        lr=2e-3,
        batch_size=4,
        max_seq_len=96,
        max_steps=6,
        eval_split=0.2,
        logging_steps=1,
        threads=1,
        save_steps=2,
        eval_steps=100,
        dropout=0.0,
    )
    return TrainingSettings(**(values | changes))


def test_a_short_run_lowers_the_loss_and_writes_a_valid_adapter(base_model: Path, tmp_path: Path):
    dest = train(
        TINY, "tiny", base_model=base_model, adapters_dir=tmp_path, settings=tiny_settings(), progress=False
    )
    assert dest == tmp_path / "tiny"
    info = inspect_adapter(dest, base_model_path=base_model, max_lora_rank=16)
    m = info.manifest
    assert m["eval_metrics"]["eval_loss"] < m["eval_metrics"]["eval_loss_start"]
    assert m["train_metrics"]["last_logged_loss"] < m["train_metrics"]["first_logged_loss"]
    assert m["train_metrics"]["steps"] == 6 and m["train_metrics"]["tokens_per_second"] > 0
    assert m["base_model"] == str(base_model) and len(m["data_fingerprint"]) == 16
    peft_cfg = json.loads((dest / "adapter_config.json").read_text())
    assert peft_cfg["r"] == 8 and not peft_cfg.get("modules_to_save")
    assert [json.loads(line)["step"] for line in (dest / "metrics.jsonl").read_text().splitlines()][-1] == 6
    # Nothing else is left in the adapters folder: no temp folder, no checkpoints.
    assert sorted(p.name for p in tmp_path.iterdir()) == [".runs", "tiny"]
    assert not any((tmp_path / ".runs").iterdir())


def test_an_interrupted_run_resumes_and_leaves_the_old_adapter_alone(
    base_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    settings = tiny_settings(max_steps=4, eval_split=0.0)
    old = train(
        TINY,
        "styled",
        base_model=base_model,
        adapters_dir=tmp_path,
        settings=tiny_settings(max_steps=1, eval_split=0.0),
        progress=False,
    )
    old_manifest = (old / "ragtune-adapter.json").read_text()

    from training import callbacks

    real_on_log = callbacks.MetricsLog.on_log

    def crash_at_step_3(self, args, state, control, logs=None, **kw):
        real_on_log(self, args, state, control, logs=logs, **kw)
        if state.global_step >= 3:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C after the step-2 checkpoint

    monkeypatch.setattr(callbacks.MetricsLog, "on_log", crash_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        train(
            TINY,
            "styled",
            base_model=base_model,
            adapters_dir=tmp_path,
            settings=settings,
            overwrite=True,
            progress=False,
        )
    assert (old / "ragtune-adapter.json").read_text() == old_manifest  # untouched
    assert (tmp_path / ".runs" / "styled" / "checkpoint-2").is_dir()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".styled.")]  # no temp folder left

    monkeypatch.setattr(callbacks.MetricsLog, "on_log", real_on_log)
    with pytest.raises(TrainError, match="differ from the interrupted run"):
        train(
            TINY,
            "styled",
            base_model=base_model,
            adapters_dir=tmp_path,
            settings=tiny_settings(max_steps=5, eval_split=0.0),
            overwrite=True,
            resume=True,
            progress=False,
        )
    dest = train(
        TINY,
        "styled",
        base_model=base_model,
        adapters_dir=tmp_path,
        settings=settings,
        overwrite=True,
        resume=True,
        progress=False,
    )
    m = json.loads((dest / "ragtune-adapter.json").read_text())
    assert m["train_metrics"]["resumed_from"] == "checkpoint-2"
    assert m["train_metrics"]["steps"] == 4
    assert (
        m["created"] != json.loads(old_manifest)["created"]
        or m["train_metrics"] != json.loads(old_manifest)["train_metrics"]
    )
    steps = [json.loads(line)["step"] for line in (dest / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == 4 and 3 in steps  # one log across both halves of the run


def test_resume_without_a_checkpoint_is_refused(base_model: Path, tmp_path: Path):
    with pytest.raises(TrainError, match="no checkpoint of 'fresh'"):
        train(
            TINY,
            "fresh",
            base_model=base_model,
            adapters_dir=tmp_path,
            settings=tiny_settings(),
            resume=True,
            progress=False,
        )


def test_an_existing_name_is_refused_without_overwrite(base_model: Path, tmp_path: Path):
    (tmp_path / "taken").mkdir()
    with pytest.raises(AdapterExists, match="--overwrite") as err:
        train(
            TINY,
            "taken",
            base_model=base_model,
            adapters_dir=tmp_path,
            settings=tiny_settings(),
            progress=False,
        )
    assert err.value.status_code == 409


def test_bad_inputs_are_refused_before_any_model_loads(base_model: Path, tmp_path: Path):
    with pytest.raises(ModelError, match="does not exist.*ragtune models"):
        train(TINY, "x", base_model=tmp_path / "no-model", adapters_dir=tmp_path, settings=tiny_settings())
    with pytest.raises(TrainError, match="--rank 12"):
        train(TINY, "x", base_model=base_model, adapters_dir=tmp_path, settings=tiny_settings(rank=12))
    with pytest.raises(TrainError, match="--name"):
        train(TINY, "../escape", base_model=base_model, adapters_dir=tmp_path, settings=tiny_settings())
    with pytest.raises(TrainError, match="--target-modules"):
        train(
            TINY,
            "x",
            base_model=base_model,
            adapters_dir=tmp_path,
            settings=tiny_settings(target_modules=["c_attn"]),
            progress=False,
        )
