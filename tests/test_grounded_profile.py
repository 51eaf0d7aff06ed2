"""The `grounded` profile: by the reader adapter (`make reader-adapter`) once it is trained, with
extractive grounding; else by the base model, with the grounding its catalogue entry measured."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import make_lora_adapter

from ragtune.core.catalogue import CATALOGUE
from ragtune.serving.builtin import (
    GROUNDED_PROFILE,
    READER_ADAPTER,
    demo_profile,
    model_grounding,
    with_grounded,
)
from ragtune.serving.settings import ProfileSettings, Settings


@pytest.fixture(scope="module")
def reader_dir(tmp_path_factory: pytest.TempPathFactory, base_model: Path) -> Path:
    root = tmp_path_factory.mktemp("adapters")
    make_lora_adapter(base_model, root / READER_ADAPTER, seed=3)
    return root


def settings_with(adapters_dir: Path, base_model: Path, **serving: object) -> Settings:
    return Settings(
        models_dir=base_model.parent,
        adapters_dir=adapters_dir,
        serving=serving,
    )


def test_a_trained_reader_adds_the_grounded_profile(reader_dir: Path, base_model: Path) -> None:
    settings = with_grounded(settings_with(reader_dir, base_model))
    assert settings.serving.adapters == {READER_ADAPTER: READER_ADAPTER}
    profile = settings.serving.profiles[GROUNDED_PROFILE]
    # No collection of its own: the request names one (`rag.collection`); the adapter was
    # trained on 2 to 4 sources.
    assert (profile.adapter, profile.collection, profile.top_k) == (READER_ADAPTER, None, 3)
    # The measured values, not the constants the profile is built from: changing one of them
    # needs a new measurement. The relevance floor (bench/results/floor.md); the reader adapter
    # is trained to quote, so it quotes, whatever its base model.
    assert profile.grounding == "extractive"
    assert profile.min_similarity == 0.67


def test_without_a_reader_the_base_model_answers_and_the_log_says_how_to_train_it(
    tmp_path: Path, base_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = with_grounded(settings_with(tmp_path, base_model))
    assert settings.serving.adapters == {}
    profile = settings.serving.profiles[GROUNDED_PROFILE]
    assert (profile.adapter, profile.top_k, profile.grounding) == (None, 3, "extractive")
    out = " ".join(capsys.readouterr().err.split())  # rich wraps at the terminal width
    assert "no reader adapter" in out and "make reader-adapter" in out


def test_a_configured_grounded_profile_wins(reader_dir: Path, base_model: Path) -> None:
    mine = ProfileSettings(collection="kb", top_k=2)
    settings = with_grounded(settings_with(reader_dir, base_model, profiles={GROUNDED_PROFILE: mine}))
    assert settings.serving.profiles[GROUNDED_PROFILE] == mine
    assert READER_ADAPTER not in settings.serving.adapters


def test_the_grounding_follows_the_base_model(tmp_path: Path, base_model: Path) -> None:
    """A model that reads its sources answers freely, checked; one that does not quotes. From
    the model folder's provenance (its catalogue entry); a model from elsewhere is checked."""
    import json

    assert model_grounding(base_model) == "extractive"  # the default, SmolLM2-135M
    measured = {name: entry.grounding for name, entry in CATALOGUE.items()}
    assert measured == {  # bench/results/checked.md
        "smollm2-135m-instruct": "extractive",
        "qwen2.5-coder-0.5b-instruct": "extractive",
        "qwen2.5-coder-1.5b-instruct": "checked",
    }
    reader = tmp_path / "imported"
    reader.mkdir()
    marker = {"provenance": {"catalogue": "qwen2.5-coder-1.5b-instruct"}}
    (reader / "ragtune-model.json").write_text(json.dumps(marker))
    assert model_grounding(reader) == "checked"
    assert model_grounding(tmp_path / "from-a-folder") == "checked"
    # The profile's relevance floor follows its grounding: the check abstains too, so the floor
    # sits lower under it (serving.grounding.profile_floor, bench/results/checked.md).
    checked = with_grounded(settings_with(tmp_path, reader)).serving.profiles[GROUNDED_PROFILE]
    assert (checked.grounding, checked.min_similarity) == ("checked", 0.60)
    quoting = with_grounded(settings_with(tmp_path, base_model)).serving.profiles[GROUNDED_PROFILE]
    assert (quoting.grounding, quoting.min_similarity) == ("extractive", 0.67)


def test_the_demo_profile_holds_answers_as_grounded_does_until_its_adapter_is_trained(
    tmp_path: Path, base_model: Path
) -> None:
    """`ragtune demo`'s profile: free decoding for the house-style adapter's own words; without
    it, the base model's grounding and floor (free, the default model answered none of the
    newcomer's six questions with its citation, bench/results/models.md)."""
    quoting = demo_profile(settings_with(tmp_path, base_model), None)
    assert (quoting.collection, quoting.top_k, quoting.grounding, quoting.min_similarity) == (
        "demo",
        3,
        "extractive",
        0.67,
    )
    styled = demo_profile(settings_with(tmp_path, base_model), "house-style")
    assert (styled.adapter, styled.grounding, styled.min_similarity) == ("house-style", None, None)
