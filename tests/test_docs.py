"""The docs stay checkable: docs/configuration.md is the settings models' own page, and every
fenced block of README.md and docs/*.md is one `make docs-check` knows how to run or check."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"docs_{name}", DOCS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def check() -> ModuleType:
    return _load("check")


def test_configuration_page_is_generated_from_the_settings_models() -> None:
    gen = _load("gen_config")
    assert (DOCS / "configuration.md").read_text() == gen.render(), (
        "docs/configuration.md is stale: run .venv/bin/python docs/gen_config.py"
    )


def test_every_setting_has_a_row_on_the_configuration_page() -> None:
    from pydantic import BaseModel

    from ragtune.serving.settings import Settings

    page = (DOCS / "configuration.md").read_text()

    def leaves(model: type[BaseModel], prefix: str) -> list[str]:
        out = []
        for name, info in model.model_fields.items():
            sub = info.annotation
            if isinstance(sub, type) and issubclass(sub, BaseModel):
                out += leaves(sub, f"{prefix}{name}.")
            else:
                out.append(prefix + name)
        return out

    names = leaves(Settings, "")
    assert "serving.routing.min_score" in names and "retrieval.top_k" in names
    for name in names:
        assert f"| `{name}` |" in page, name


def test_every_block_of_the_docs_is_classified(check: ModuleType) -> None:
    blocks = [b for path in check.doc_files() for b in check.parse(path)]  # DocError on an unknown one
    assert len(blocks) > 20
    kinds = {b.kind for b in blocks}
    assert kinds <= {"shell", "python", "yaml", "json", "text", "output"}, kinds
    for b in blocks:
        if b.mode in ("slow", "serves", "manual"):
            assert b.reason, b.where
    assert any(b.kind == "shell" and b.mode == "run" and b.needs_server for b in blocks)
    # the README's first request shows its `sources`, and the check compares them
    readme = [b for b in blocks if b.path.name == "README.md"]
    assert any(b.expected and '"sources"' in b.expected for b in readme)


def test_unknown_fences_and_markers_are_errors(check: ModuleType, tmp_path: Path) -> None:
    for text, message in [
        ("```\nls\n```\n", "without a known language"),
        ("```ruby\nputs 1\n```\n", "without a known language"),
        ("<!-- check: later -->\n```bash\nls\n```\n", "unknown marker"),
        ("<!-- check: slow -->\n```bash\nls\n```\n", "needs a reason"),
        ("<!-- check: output -->\n```text\nx\n```\n", "follows the block"),
        ("```bash\nls\n", "unclosed"),
    ]:
        page = tmp_path / "page.md"
        page.write_text(text)
        with pytest.raises(check.DocError, match=message):
            check.parse(page)


def test_shown_output_is_compared_past_ids_times_and_ellipses(check: ModuleType) -> None:
    actual = '{"id":"chatcmpl-4341b6a9f89c","created":1796580787,"model":"demo","took":"3.2 s"}'
    assert check.matches('{"id": "chatcmpl-...", "created": 0, "model": "demo", ...}', actual)
    assert check.matches('{"id":"chatcmpl-x","created":1,"model":"demo","took":"0.4 s"}', actual)
    assert not check.matches('{"id": "chatcmpl-...", "model": "base", ...}', actual)
    assert check.shown_outputs("a\n# -> x\n#    y\nb\n# -> z\nc") == [("a", "x\ny"), ("b", "z")]


def test_links_between_the_docs_reach_a_file_and_heading(check: ModuleType, tmp_path: Path) -> None:
    assert [b for path in check.doc_files() for b in check.broken_links(path)] == []
    (tmp_path / "grounding.md").write_text("# The reader adapter\n")
    page = tmp_path / "page.md"
    page.write_text(
        "[a](nope.md) [b](grounding.md#nope) [c](grounding.md#the-reader-adapter) [d](https://x)\n"
    )
    assert len(check.broken_links(page)) == 2
