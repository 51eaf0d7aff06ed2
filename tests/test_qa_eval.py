"""`ragtune eval qa` and the QA helpers on a small fixture, through the real app and real retrieval.

The engine is a scripted reader (a double): it answers with the text of the first source in its
prompt and that source's marker, or with the abstention sentence when the prompt has no sources.
So every metric has a known value: answers and citations follow retrieval, counterfactual
passages are followed, and with the gold passage gone the double answers from another passage
instead of abstaining.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import shutil
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from ragtune.evaluation.qa import EvalError, QAEvalOptions, run_qa_eval
from ragtune.evaluation.qa_score import is_abstention, token_f1
from ragtune.retrieval import Document, Library
from ragtune.serving.app import create_app
from ragtune.serving.engine import AdapterRef, Delta, SamplingOptions
from ragtune.serving.settings import load_settings
from ragtune.training.qa import (
    ABSTAIN,
    SENTENCE_END,
    QADataError,
    Question,
    answer_sentence,
    answer_type,
    contains,
    counterfactuals,
    is_held_out,
    load_qa_set,
    pick_substitute,
    split_questions,
    write_qa_set,
)
from ragtune.training.reader import ReaderMix, build_reader_examples
from tests.doubles import EchoEngine

QA = Path(__file__).parent / "fixtures" / "qa"
FIRST_SOURCE = re.compile(r"\[1\][^\n]*\n(.*?)(?:\n\n\[2\]|\n\nQuestion:)", re.S)


class ReaderDouble(EchoEngine):
    """Answers with the first source's text and [1], or abstains when the prompt has no sources."""

    def __init__(self, tokenizer: Any):
        super().__init__(tokenizer, max_model_len=2048)
        self.calls = 0

    async def generate(
        self, prompt_ids: list[int], options: SamplingOptions, request_id: str, adapter: AdapterRef | None
    ) -> AsyncIterator[Delta]:
        prompt = self.tokenizer.decode(prompt_ids)
        # Fixture questions only: the server's own start-up and health checks are not counted.
        asked = any(q.text in prompt for q in load_qa_set(QA).questions)
        self.calls += asked
        found = FIRST_SOURCE.search(prompt)
        yield Delta(0, f"{found.group(1).strip()} [1]." if found else ABSTAIN, 1, "stop")


def test_the_qa_helpers_score_split_and_substitute():
    qa = load_qa_set(QA)
    assert len(qa.questions) == 8  # the query without an answer is left out
    assert contains("It was built in 1871 [1].", "1871") and not contains("in 18712", "1871")
    assert contains("The Baltic Sea.", "the baltic sea") and token_f1("the Baltic Sea", "Baltic Sea") == 1.0
    assert is_abstention(ABSTAIN) and is_abstention("I don't know.") and not is_abstention("It is 1871 [1].")
    assert answer_type("1871") == "year" and answer_type("Oskar Lind") == "name"
    assert answer_type("12 May 1990") == "date" and answer_type("local granite") == "phrase"
    text = "Intro words here for context. The lighthouse was built in 1871 from local granite. More follows."
    assert answer_sentence(text, "1871") == "The lighthouse was built in 1871 from local granite"
    # The split is by passage and stable: a passage's questions all land on one side.
    held = {q.doc_id for q in split_questions(qa, "heldout")}
    assert held == {p for p in qa.passages if is_held_out(p)}
    assert {q.doc_id for q in split_questions(qa, "train")}.isdisjoint(held)
    texts, changed = counterfactuals(qa, qa.questions, seed=1)
    assert len(changed) == 8
    for c in changed:
        new = texts[c.question.doc_id]
        assert c.substitute in new and c.question.answer not in new
        assert answer_type(c.substitute) == answer_type(c.question.answer)


def test_a_substitute_keeps_the_answer_s_shape_when_it_can():
    pool = {"number": ["4 credits", "20 minutes", "7 credits", "1871 ships"]}
    rng = random.Random(0)
    picks = {pick_substitute("12 minutes", "Trains leave every 12 minutes.", pool, rng) for _ in range(20)}
    assert picks == {"20 minutes"}  # not "4 credits": the passage must still make sense
    # With no answer of the same shape, any other of the same type.
    assert pick_substitute("3 stops", "It has 3 stops.", pool, rng) in pool["number"]
    # Never the answer itself, nor one already in the passage.
    assert pick_substitute("20 minutes", "Every 20 minutes.", {"number": ["20 minutes"]}, rng) is None


def test_a_set_without_answers_or_files_is_refused(tmp_path: Path):
    with pytest.raises(QADataError, match="no such folder"):
        load_qa_set(tmp_path / "missing")
    (tmp_path / "qrels").mkdir()
    (tmp_path / "corpus.jsonl").write_text('{"_id": "d", "text": "x"}\n')
    (tmp_path / "queries.jsonl").write_text('{"_id": "q", "text": "why?"}\n')
    (tmp_path / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq\td\t1\n")
    with pytest.raises(QADataError, match="needs answers"):
        load_qa_set(tmp_path)


def _reader_app(tmp_path: Path, base_model: Path, **overrides: Any) -> tuple[Any, ReaderDouble, Library]:
    """The app on the reader double, with settings `overrides` (e.g. `serving`)."""
    from transformers import AutoTokenizer

    settings = load_settings(
        models_dir=base_model.parent,
        adapters_dir=tmp_path / "adapters",
        indexes_dir=tmp_path / "indexes",
        **overrides,
    )
    (tmp_path / "adapters").mkdir(exist_ok=True)
    engine = ReaderDouble(AutoTokenizer.from_pretrained(base_model))
    library = Library(settings.indexes_dir, settings.retrieval)
    return create_app(settings, engine=engine, library=library), engine, library


@pytest.fixture
def app_client(tmp_path: Path, base_model: Path):  # noqa: ANN201
    app, engine, library = _reader_app(tmp_path, base_model)
    yield app, engine, library
    library.close()


async def _run(app: Any, opts: QAEvalOptions, answers: Path) -> dict[str, Any]:
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://ragtune") as client:
            return await run_qa_eval(client, QA, opts, results_file=answers)


def test_eval_qa_scores_answers_grounding_and_abstention_and_resumes(app_client, tmp_path: Path):
    app, engine, library = app_client
    opts = QAEvalOptions(models=["base"], rag=[True, False], split="all", top_k=2, concurrency=4)
    answers = tmp_path / "answers.jsonl"
    # A passage an earlier version of the set had: the eval's own collection drops it.
    stale = library.create(f"qa-{load_qa_set(QA).name}")
    stale.upsert([Document(id="gone", text="The Vorn bridge opened in 1871 to carriages only.")])
    summary = asyncio.run(_run(app, opts, answers))
    rag, plain = summary["configs"]["base+RAG"], summary["configs"]["base"]
    # Retrieval finds each one-sentence passage first, and the double repeats it citing [1].
    assert rag["retrieved"] == 1.0 and rag["contains"] == 1.0 and rag["citation"] == 1.0
    assert rag["behaviour"] == 1.0 and rag["grounded"] == 1.0 and rag["n_grounded"] == 8
    # With the gold passage removed the double answers from another passage: it never abstains.
    assert rag["abstain"] == 0.0 and rag["n_abstain"] == 8
    # ... and with the gold passage shown it answered: no abstention counted against it.
    assert rag["false_abstain"] == 0.0 and "false_abstain" not in plain
    # Without retrieval it has no sources and abstains: no answer, but the reader's format.
    assert plain["contains"] == 0.0 and plain["behaviour"] == 1.0 and "grounded" not in plain
    assert rag["latency_p50_s"] is not None
    # The collection is left as the corpus is, whatever the phases did to it.
    coll = library.open(summary["collection"])
    assert {d.id for d in coll.list_documents(limit=100)} == {f"p{i}" for i in range(1, 9)}
    assert "1871" in coll.get("p1").text
    asked = engine.calls
    assert asked == 8 * 2 + 8 + 8  # answer (2 configs) + counterfactual + abstain (RAG only)
    rows = [json.loads(line) for line in answers.read_text().splitlines()]
    assert len(rows) == asked
    # A rerun resumes from the answers file: nothing is asked again, the summary is the same.
    again = asyncio.run(_run(app, opts, answers))
    assert engine.calls == asked and again["configs"] == summary["configs"]
    # Answers recorded by another version of the model (a retrained adapter has a new
    # fingerprint) are not reused: everything is asked again.
    assert {row["version"] for row in rows} == {"base"}
    answers.write_text("".join(json.dumps({**row, "version": "0123456789abcdef"}) + "\n" for row in rows))
    third = asyncio.run(_run(app, opts, answers))
    assert engine.calls == 2 * asked

    def scores(result: dict) -> dict:  # the new answers' latencies differ; every score is the same
        return {c: {k: v for k, v in m.items() if "latency" not in k} for c, m in result["configs"].items()}

    assert scores(third) == scores(summary)


def test_a_second_eval_of_the_same_folder_is_refused_while_the_first_holds_its_collection(
    app_client, tmp_path: Path
):
    """Each phase rewrites the eval collection's passages: a second run in the same indexes folder
    would answer from the first one's counterfactual texts. It is refused, naming the collection."""
    from filelock import FileLock

    app, engine, _ = app_client
    opts = QAEvalOptions(models=["base"], rag=[True], split="all", top_k=2, concurrency=4)
    locks = tmp_path / "indexes"

    async def run() -> dict[str, Any]:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://ragtune") as client:
                return await run_qa_eval(client, QA, opts, results_file=tmp_path / "a.jsonl", lock_dir=locks)

    collection = f"qa-{load_qa_set(QA).name}".lower()
    with FileLock(locks / f".eval-{collection}.lock"), pytest.raises(EvalError, match=collection):
        asyncio.run(run())
    assert engine.calls == 0
    assert asyncio.run(run())["configs"]["base+RAG"]["contains"] == 1.0  # free again once released


def test_a_profile_held_to_its_sources_is_asked_with_retrieval_only(tmp_path: Path, base_model: Path):
    """`--models base,grounded --rag on,off` (as `make eval` asks): the server refuses a profile
    whose grounding holds answers to sources a request without retrieval, so the eval has no such
    configuration for it; asked for nothing else, it says to ask with retrieval."""
    app, engine, library = _reader_app(
        tmp_path, base_model, serving={"profiles": {"held": {"grounding": "checked"}}}
    )
    try:
        opts = QAEvalOptions(models=["base", "held"], rag=[True, False], split="all", phases=("answer",))
        summary = asyncio.run(_run(app, opts, tmp_path / "a.jsonl"))
        assert set(summary["configs"]) == {"base+RAG", "base", "held+RAG"}
        assert summary["configs"]["held+RAG"]["contains"] == 1.0
        asked = engine.calls
        with pytest.raises(EvalError, match="held answer only from retrieved sources"):
            asyncio.run(_run(app, replace(opts, models=["held"], rag=[False]), tmp_path / "b.jsonl"))
        assert engine.calls == asked
    finally:
        library.close()


def test_eval_qa_refuses_an_unknown_model_before_asking(app_client, tmp_path: Path):
    app, engine, _ = app_client
    opts = QAEvalOptions(models=["nosuch"], rag=[True])
    with pytest.raises(EvalError, match="unknown model 'nosuch'"):
        asyncio.run(_run(app, opts, tmp_path / "a.jsonl"))
    assert engine.calls == 0


def test_eval_qa_loads_the_adapter_a_profile_names_or_refuses_before_asking(tmp_path: Path, base_model: Path):
    from transformers import AutoTokenizer

    from tests.conftest import make_lora_adapter

    adapters = tmp_path / "adapters"
    make_lora_adapter(base_model, adapters / "reader-x", seed=5)
    profiles = {"quoting": {"adapter": "reader-x", "grounding": "extractive"}, "lost": {"adapter": "nope"}}
    settings = load_settings(
        models_dir=base_model.parent,
        adapters_dir=adapters,
        indexes_dir=tmp_path / "indexes",
        serving={"profiles": profiles},
    )
    engine = ReaderDouble(AutoTokenizer.from_pretrained(base_model))
    library = Library(settings.indexes_dir, settings.retrieval)
    try:
        app = create_app(settings, engine=engine, library=library)
        with pytest.raises(EvalError, match="model 'lost' uses adapter 'nope', which is not loaded"):
            asyncio.run(
                _run(app, QAEvalOptions(models=["quoting", "lost"], rag=[True]), tmp_path / "a.jsonl")
            )
        assert engine.calls == 0
        opts = QAEvalOptions(models=["quoting"], rag=[True], split="all", phases=("answer",))
        summary = asyncio.run(_run(app, opts, tmp_path / "b.jsonl"))
    finally:
        library.close()
    assert summary["configs"]["quoting+RAG"]["n_contains"] == engine.calls == 8
    rows = [json.loads(line) for line in (tmp_path / "b.jsonl").read_text().splitlines()]
    assert {row["version"] for row in rows} != {"base"}  # the adapter's fingerprint


def test_reader_examples_use_the_serving_format_and_only_train_passages(tmp_path: Path, base_model: Path):
    settings = load_settings(models_dir=base_model.parent, indexes_dir=tmp_path / "indexes")
    qa = load_qa_set(QA)
    library = Library(tmp_path / "indexes", settings.retrieval)
    try:
        rows, stats = build_reader_examples(
            qa, library=library, n_examples=50, mix=ReaderMix(top_k=3, min_k=2, seed=3)
        )
    finally:
        library.close()
    train_docs = {q.doc_id for q in split_questions(qa, "train")}
    assert stats.examples == len(rows) == len(split_questions(qa, "train"))
    assert stats.answered + stats.abstain == stats.examples
    for row in rows:
        user, reply = row["messages"][0]["content"], row["messages"][1]["content"]
        assert user.startswith("Use the numbered sources below") and "\n\nQuestion: " in user
        assert row["doc_id"] in train_docs
        for held in set(qa.passages) - train_docs:
            assert qa.passages[held].text not in user  # held-out passages never appear
        if reply == ABSTAIN:
            assert qa.passages[row["doc_id"]].text not in user
        else:
            n = int(re.search(r"\[(\d)\]\.$", reply).group(1))
            shown = re.findall(r"^\[(\d)\][^\n]*\n(.*)$", user, re.M)
            cited = dict(shown)[str(n)]
            assert reply.removesuffix(f" [{n}].") in cited


def test_short_sources_teach_the_marker_on_a_whole_source(tmp_path: Path, base_model: Path):
    """--p-short: every source of those examples is cut to a sentence or two, and an answer is
    the answering source, whole, with its marker; at 0 none is."""
    long_set = tmp_path / "qa-long"
    shutil.copytree(QA, long_set)
    rows = [json.loads(line) for line in (QA / "corpus.jsonl").read_text().splitlines()]
    filler = " Visitors come to see it every summer. The county archive keeps its old plans and letters."
    (long_set / "corpus.jsonl").write_text(
        "".join(json.dumps({**r, "text": r["text"] + filler}) + "\n" for r in rows)
    )
    settings = load_settings(models_dir=base_model.parent, indexes_dir=tmp_path / "indexes")
    qa = load_qa_set(long_set)
    library = Library(tmp_path / "indexes", settings.retrieval)
    try:
        mix = ReaderMix(top_k=3, min_k=2, seed=3)
        plain, _ = build_reader_examples(
            qa, library=library, n_examples=50, mix=replace(mix, p_short=0.0), collection_name="a"
        )
        short, stats = build_reader_examples(
            qa,
            library=library,
            n_examples=50,
            mix=replace(mix, p_short=1.0, p_absent=0.2),
            collection_name="c",
        )
    finally:
        library.close()

    def sources_and_replies(examples: list[dict]) -> list[tuple[dict[str, str], str]]:
        return [
            (dict(re.findall(r"^\[(\d)\][^\n]*\n(.*)$", e["messages"][0]["content"], re.M)),
             e["messages"][1]["content"])
            for e in examples
        ]  # fmt: skip

    def whole(shown: dict[str, str], reply: str) -> bool:
        n = re.search(r"\[(\d)\]\.$", reply).group(1)
        return reply == f"{shown[n]} [{n}]."

    assert not any(whole(*sr) for sr in sources_and_replies(plain) if sr[1] != ABSTAIN)
    assert stats.short == stats.examples == len(short) and stats.answered > 0 and stats.abstain > 0
    for shown, reply in sources_and_replies(short):
        assert shown and all(len(SENTENCE_END.split(text)) <= 2 for text in shown.values()), shown
        assert reply == ABSTAIN or whole(shown, reply)  # the whole source, then its marker


def test_an_abstention_counts_against_the_model_only_when_the_answer_was_shown() -> None:
    from ragtune.evaluation.qa_score import score_row

    q = Question(id="q1", text="When did the Vorn bridge open?", answer="1871", doc_id="p1")
    row = {"phase": "answer", "rag": True, "reply": ABSTAIN, "sources": ["p1", "p2"]}
    # The gold passage's chunk that was shown holds the answer: abstaining is a miss.
    shown = score_row({**row, "source_texts": ["The Vorn bridge opened in 1871.", "Tides."]}, q, {}, None)
    assert shown["false_abstain"] == 1.0 and shown["retrieved"] == 1.0
    # A chunk of the gold passage was shown, but not the one with the answer: no penalty.
    other_chunk = score_row({**row, "source_texts": ["The bridge is 300 m long.", "Tides."]}, q, {}, None)
    assert "false_abstain" not in other_chunk and other_chunk["retrieved"] == 1.0
    # An answer, not an abstention, where the answer was shown: counted, and not as an abstention.
    reply = {"reply": "It opened in 1871 [1].", "source_texts": ["The Vorn bridge opened in 1871."]}
    answered = score_row({**row, **reply}, q, {}, None)
    assert answered["false_abstain"] == 0.0 and answered["citation"] == 1.0


def test_an_answer_matches_text_stored_with_spaced_punctuation() -> None:
    # DisflQA's passages are stored tokenised: a verbatim quotation must still hold the answer.
    assert contains("Victoria produces two - thirds of the milk [1].", "two-thirds")
    assert contains("It began about 13 , 000 BP [2].", "13,000 BP")
    assert contains("to punish Céloron ' s trading partners", "Céloron's trading partners")
    assert not contains("about 13 000 years", "13,000 BP") and not contains("two thirty", "two-thirds")


def test_unanswerable_questions_are_loaded_and_scored_by_their_abstention(tmp_path: Path) -> None:
    from ragtune.evaluation.qa_score import score_row

    (tmp_path / "qrels").mkdir()
    (tmp_path / "corpus.jsonl").write_text(
        '{"_id": "p1", "text": "The Vorn bridge opened in 1871."}\n'
        '{"_id": "p2", "text": "Its architect is unknown."}\n'
    )
    (tmp_path / "queries.jsonl").write_text(
        '{"_id": "a", "text": "When did the Vorn bridge open?", "answer": "1871"}\n'
        '{"_id": "b", "text": "Who paid for the Vorn bridge?", "answer": "unknown"}\n'
        '{"_id": "c", "text": "How long is the Vorn bridge?", "answerable": false}\n'
        '{"_id": "d", "text": "Who was its architect?", "answer": "unknown"}\n'
    )
    (tmp_path / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\na\tp1\t1\nb\tp1\t1\nc\tp1\t1\nd\tp2\t1\n"
    )
    qs = {q.id: q for q in load_qa_set(tmp_path).questions}
    # SQuAD 2.0's marker, unless the passage itself says "unknown" (then it is the answer).
    assert [qs[i].answerable for i in "abcd"] == [True, False, False, True]
    _, changed = counterfactuals(load_qa_set(tmp_path), list(qs.values()))
    assert "b" not in {c.question.id for c in changed} and "c" not in {c.question.id for c in changed}

    shown = ["The Vorn bridge opened in 1871."]
    row = {"phase": "answer", "rag": True, "sources": ["p1"], "source_texts": shown}
    abstained = score_row({**row, "reply": ABSTAIN}, qs["b"], {}, None)
    assert abstained["unanswerable_abstain"] == 1.0 and abstained["retrieved"] == 1.0
    # Neither an answer nor a citation is asked of it, and abstaining is no miss.
    assert not {"contains", "f1", "citation", "false_abstain"} & abstained.keys()
    answered = score_row({**row, "reply": "The Vorn bridge opened in 1871 [1]."}, qs["b"], {}, None)
    assert answered["unanswerable_abstain"] == 0.0
    # With the gold passage removed it is an abstention question like any other.
    gone = {"phase": "abstain", "rag": True, "reply": ABSTAIN, "sources": ["p2"], "source_texts": ["x"]}
    assert score_row(gone, qs["c"], {}, None) == {"abstain": 1.0}


def test_a_set_may_name_each_questions_rival():
    """conflict-qa names each question's substitute: the counterfactual passage carries it, not a
    random answer of the same type ("Who wrote Hamlet?" is never answered "1912")."""
    qa = load_qa_set(Path("examples/conflict-qa"))
    assert len(qa.questions) == 60
    texts, changed = counterfactuals(qa, qa.questions)
    assert len(changed) == 60
    by_id = {c.question.id: c for c in changed}
    hamlet = by_id["q-hamlet"]
    assert hamlet.substitute == "Christopher Marlowe" == qa.extra["q-hamlet"]["substitute"]
    assert "Christopher Marlowe" in texts["hamlet"] and "Shakespeare" not in texts["hamlet"]
    assert all(c.substitute == qa.extra[c.question.id]["substitute"] for c in changed)


def test_a_written_qa_set_reads_back(tmp_path: Path) -> None:
    passages = [{"_id": "p1", "title": "Vorn", "text": "The Vorn bridge opened in 1871."}]
    questions = [({"_id": "a", "text": "When did it open?", "answer": "1871", "substitute": "1902"}, "p1")]
    write_qa_set(tmp_path / "set", passages, questions)
    qa = load_qa_set(tmp_path / "set")
    assert [(q.id, q.answer, q.doc_id) for q in qa.questions] == [("a", "1871", "p1")]
    assert qa.passages["p1"].text == passages[0]["text"] and qa.extra["a"] == {"substitute": "1902"}
