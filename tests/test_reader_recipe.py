"""`make reader-adapter` and `make eval` from a fresh clone: the Makefile's default QA set ships in
the repository (with its license), loads, and splits by passage; with MODEL= the reader is trained
on, and recorded for, that base model."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from ragtune.training.qa import load_qa_set, split_questions

REPO = Path(__file__).resolve().parents[1]


def make_default(name: str) -> str:
    found = re.search(rf"^{name} \?= (.+)$", (REPO / "Makefile").read_text(), re.M)
    assert found, f"Makefile sets no default {name}"
    return found.group(1).strip()


def dry_run(target: str, *args: str) -> str:
    """The commands `make -n` would run for `target` (nothing is run)."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    proc = subprocess.run(
        ["make", "-n", "--no-print-directory", "-C", str(REPO), target, *args],
        capture_output=True,
        text=True,
        check=True,
    )
    return proc.stdout.replace("\\\n", " ")


def test_default_qa_set_ships_in_the_repository_and_loads() -> None:
    qa_set = make_default("QA_SET")
    path = REPO / qa_set
    assert not qa_set.startswith(("..", "/")), "a fresh clone has no folder outside the repository"
    qa = load_qa_set(path)
    assert (len(qa.passages), len(qa.questions)) == (1204, 8000)
    train, held = split_questions(qa, "train"), split_questions(qa, "heldout")
    assert len(train) == 6222 and len(held) == 1778
    assert not {q.doc_id for q in train} & {q.doc_id for q in held}
    assert sum(q.answerable for q in train) > 800  # enough for a GPU's 1600 examples' answered share
    readme = (path / "README.md").read_text()
    assert "CC BY-SA 4.0" in readme and "SQuAD 2.0" in readme and "Disfl-QA" in readme
    assert "CC BY-SA 4.0" in (path / "LICENSE").read_text()


def test_reader_recipe_uses_the_shipped_set_unless_told() -> None:
    assert "--dataset examples/disflqa " in dry_run("reader-adapter")
    assert "--dataset ../shared/data/disflqa " in dry_run("reader-adapter", "QA_SET=../shared/data/disflqa")
    assert "--dataset examples/disflqa " in dry_run("eval")


@pytest.mark.parametrize("model", ["smollm2-135m-instruct", "qwen2.5-coder-1.5b-instruct"])
def test_reader_recipe_trains_on_the_model_named(model: str) -> None:
    recipe = dry_run("reader-adapter", f"MODEL={model}").splitlines()
    train = next(line for line in recipe if " train " in line)
    assert f"ragtune --base-model {model} train " in train and "--name reader " in train
    # `make eval MODEL=` offers the reader only when its manifest names that base (record.py's key).
    recorded = f'grep -qs \'"base_model_name": "{model}"\' adapters/reader/'
    assert recorded in dry_run("eval", f"MODEL={model}")


def test_reader_recipe_without_model_trains_on_the_configured_base() -> None:
    recipe = dry_run("reader-adapter").splitlines()
    train = next(line for line in recipe if " train " in line)
    assert "--base-model" not in train  # the `base_model` setting decides
