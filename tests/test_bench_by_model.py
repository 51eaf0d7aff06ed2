"""The 2x2 table across models (bench/grounding_by_model.py) and the newcomer's judge
(bench/newcomer.py), on summaries and replies written here."""

from __future__ import annotations

import json
from pathlib import Path

from bench.grounding_by_model import cells, load, markdown
from bench.newcomer import judge
from ragtune.core.prompt import ABSTAIN


def test_the_table_reads_each_model_and_set_and_orders_the_catalogue_smallest_first(tmp_path: Path) -> None:
    rag = {"base+RAG": {"contains": 0.5, "grounded": 0.25, "abstain": 0.0}, "grounded+RAG": {"abstain": 1.0}}
    for model in ["zz-imported", "qwen2.5-coder-1.5b-instruct", "smollm2-135m-instruct"]:
        (tmp_path / f"{model}__world-qa.json").write_text(json.dumps({"configs": rag}))
    off = {"base": {"contains": 0.75, "grounded": 0.5}}  # no source to follow without retrieval
    (tmp_path / "smollm2-135m-instruct__world-qa__off.json").write_text(json.dumps({"configs": off}))
    table = cells(load(tmp_path))
    assert list(table) == ["smollm2-135m-instruct", "qwen2.5-coder-1.5b-instruct", "zz-imported"]
    small = table["smollm2-135m-instruct"]
    assert small["base, no retrieval"]["world-qa: answers"] == 0.75
    assert small["base, no retrieval"]["world-qa: follows altered source"] is None
    assert small["base + RAG"]["world-qa: follows altered source"] == 0.25
    assert small["grounded"]["world-qa: abstains, gold gone"] == 1.0
    assert small["grounded"]["northwind-qa: answers"] is None  # a set not run stays empty
    assert "| smollm2-135m-instruct | base + RAG | 0.500 | 0.250 | 0.000 |" in markdown(table)


def test_the_newcomers_judge_wants_the_answer_cited_or_the_abstention() -> None:
    sources = [{"document_id": "t-harbor-0"}, {"document_id": "t-falcon-0"}]
    holds, doc = ("15 minutes",), "t-harbor-0"
    assert judge("Every 15 minutes [1].", sources, holds, doc)["right"]
    assert not judge("Every 15 minutes [2].", sources, holds, doc)["right"]  # the wrong document
    assert not judge("Every 15 minutes [1] [2].", sources, holds, doc)["right"]  # not every marker
    assert not judge("Every 15 minutes.", sources, holds, doc)["right"]  # no citation
    assert not judge("Every 20 minutes [1].", sources, holds, doc)["right"]
    assert judge(ABSTAIN, sources, (), None)["right"]
    assert not judge("Yes, there is wifi [1].", sources, (), None)["right"]
