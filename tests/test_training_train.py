"""ragtune train end to end on a tiny fixture: the loss falls, the adapter is valid, resume works,
an interrupted run leaves the previous adapter untouched, and bad input is refused up front."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ragtune.core.adapters import inspect_adapter
from ragtune.core.models import ModelError
from ragtune.training.settings import TrainingSettings
from ragtune.training.train import AdapterExists, TrainError, auto_epochs, learned, train

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
        samples=0,
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

    from ragtune.training import callbacks

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
    # The 4-step resumed run replaced the 1-step adapter that stood there.
    assert json.loads(old_manifest)["train_metrics"]["steps"] == 1
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


def test_auto_epochs_give_small_sets_enough_steps_and_big_sets_fewer_passes():
    assert auto_epochs(36, 8) == 10  # 5 steps an epoch: 50 optimizer steps
    assert auto_epochs(1200, 8) == 3
    assert auto_epochs(20_000, 8) == 1
    assert auto_epochs(5, 8) == 25  # capped
    assert learned(2.0, 1.5) is True and learned(2.0, 1.98) is False and learned(None, 1.0) is None
    assert learned(2.0, float("nan")) is False


def test_a_diverged_run_stops_with_a_clear_message_and_writes_nothing(
    base_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    import ragtune.training.fit as train_module  # where the Trainer gets its loss

    real = train_module.assistant_loss

    def nan_loss(*args, **kwargs):
        return real(*args, **kwargs) * float("nan")

    monkeypatch.setattr(train_module, "assistant_loss", nan_loss)
    with pytest.raises(TrainError, match="diverged.*nan.*--lr"):
        train(
            TINY,
            "nan",
            base_model=base_model,
            adapters_dir=tmp_path,
            settings=tiny_settings(),
            progress=False,
        )
    assert not (tmp_path / "nan").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".nan")]


def test_an_adapter_that_did_not_learn_is_flagged_and_refused_with_strict(
    base_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture
):
    from rich.console import Console

    lazy = tiny_settings(lr=1e-9, max_steps=2, samples=1)
    console = Console(stderr=True, width=200)
    with pytest.raises(TrainError, match="did not learn.*--strict"):
        train(
            TINY,
            "lazy",
            base_model=base_model,
            adapters_dir=tmp_path,
            settings=lazy.model_copy(update={"strict": True}),
            console=console,
        )
    assert not (tmp_path / "lazy").exists()
    dest = train(TINY, "lazy", base_model=base_model, adapters_dir=tmp_path, settings=lazy, console=console)
    err = capsys.readouterr().err
    assert "WARNING" in err and "did not learn" in err
    # Progress in a log is plain lines, and a held-out generation is shown.
    assert "step 2/2" in err and "expected:" in err and "got     :" in err
    manifest = json.loads((dest / "ragtune-adapter.json").read_text())
    assert manifest["eval_metrics"]["learned"] is False


def test_layers_adapts_only_the_top_decoder_layers(base_model: Path, tmp_path: Path):
    from ragtune.core.adapters import read_safetensors_header

    dest = train(
        TINY,
        "top",
        base_model=base_model,
        adapters_dir=tmp_path,
        settings=tiny_settings(layers=2, max_steps=1, eval_split=0.0),
        progress=False,
    )
    depth = json.loads((base_model / "config.json").read_text())["num_hidden_layers"]
    header = read_safetensors_header(dest / "adapter_model.safetensors")
    layers = {int(k.split(".layers.")[1].split(".")[0]) for k in header if ".layers." in k}
    assert layers == {depth - 2, depth - 1}
    assert json.loads((dest / "ragtune-adapter.json").read_text())["layers"] == 2
    inspect_adapter(dest, base_model_path=base_model, max_lora_rank=16)  # still a servable adapter
    with pytest.raises(TrainError, match=f"--layers 99: the base model has {depth} decoder layers"):
        train(TINY, "x", base_model=base_model, adapters_dir=tmp_path, settings=tiny_settings(layers=99))
