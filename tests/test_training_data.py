"""Training data: every accepted format, validation errors with line numbers, assistant-only labels."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ragtune.training.data import (
    IGNORE_INDEX,
    DataError,
    Example,
    load_examples,
    pad_batch,
    to_messages,
    tokenize_chat,
    tokenize_examples,
)
from ragtune.training.train import split_eval

FIXTURES = Path(__file__).parent / "fixtures" / "training"


@pytest.fixture(scope="module")
def tokenizer(base_model: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(base_model)


def test_every_format_becomes_messages():
    messages = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    assert to_messages({"messages": messages}) == messages
    assert to_messages({"prompt": "q", "completion": "a"}) == messages
    assert to_messages({"instruction": "q", "output": "a"}) == messages
    assert to_messages({"instruction": "q", "input": "ctx", "output": "a"})[0]["content"] == "q\n\nctx"


def test_the_tiny_fixture_mixes_formats_and_loads():
    examples, given_eval = load_examples(FIXTURES / "tiny.jsonl")
    assert len(examples) == 24 and given_eval is None
    assert examples[4].where == "tiny.jsonl line 5"


def test_bad_data_lists_every_problem_with_its_line_number():
    with pytest.raises(DataError) as err:
        load_examples(FIXTURES / "bad.jsonl")
    message = err.value.message
    assert "bad.jsonl line 5: invalid JSON" in message  # a broken line is reported before anything else
    good_lines_ok = "line 1" not in message
    assert good_lines_ok


def test_bad_records_are_reported_together(tmp_path: Path):
    lines = (FIXTURES / "bad.jsonl").read_text().splitlines()
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(line for i, line in enumerate(lines, 1) if i != 5) + "\n")
    with pytest.raises(DataError) as err:
        load_examples(path)
    message = err.value.message
    assert "5 of 6 records" in message
    assert "bad.jsonl line 2: 'messages' is empty" in message
    assert "bad.jsonl line 3: message 2 has role 'bot'" in message
    assert "bad.jsonl line 4: alpaca record lacks a non-empty 'output'" in message
    assert "bad.jsonl line 5: unknown record format (keys: answer, question)" in message
    assert "bad.jsonl line 6: prompt/completion record lacks a non-empty 'completion'" in message
    assert err.value.status_code == 400 and err.value.code == "invalid_training_data"


@pytest.mark.parametrize(
    ("record", "problem"),
    [
        ({"messages": [{"role": "user", "content": "q"}]}, "no non-empty assistant message"),
        ({"messages": [{"role": "assistant", "content": "a"}]}, "no user message"),
        ({"messages": [{"role": "user", "content": 3}, {"role": "assistant", "content": "a"}]}, "no text"),
        (
            {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "  "}]},
            "no non-empty",
        ),
        (["not", "an", "object"], "expected a JSON object"),
    ],
)
def test_each_bad_record_says_what_is_wrong(record, problem):
    with pytest.raises(ValueError, match=problem):
        to_messages(record)


def test_missing_and_empty_inputs(tmp_path: Path):
    with pytest.raises(DataError, match="no such file"):
        load_examples(tmp_path / "nope.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(DataError, match="holds no examples"):
        load_examples(tmp_path / "empty.jsonl")
    (tmp_path / "data.csv").write_text("a,b\n")
    with pytest.raises(DataError, match="expected a .jsonl file"):
        load_examples(tmp_path / "data.csv")


def test_datasets_folder_with_a_test_split(tmp_path: Path):
    import datasets

    rows = [json.loads(line) for line in (FIXTURES / "tiny.jsonl").read_text().splitlines()]
    msgs = [{"messages": to_messages(r)} for r in rows]
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(msgs[:20]), "test": datasets.Dataset.from_list(msgs[20:])}
    ).save_to_disk(str(tmp_path / "ds"))
    train, held = load_examples(tmp_path / "ds")
    assert len(train) == 20 and held is not None and len(held) == 4
    assert train[3].where == "ds[train] row 3"


def test_labels_cover_only_assistant_turns(tokenizer):
    messages = [
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "first answer"},
        {"role": "user", "content": "second question"},
        {"role": "assistant", "content": "second answer"},
    ]
    ids, labels = tokenize_chat(tokenizer, messages)
    assert len(ids) == len(labels)
    learned = tokenizer.decode([t for t, lab in zip(ids, labels, strict=True) if lab != IGNORE_INDEX])
    assert "first answer" in learned and "second answer" in learned
    assert "question" not in learned and "system" not in learned
    assert learned.count("<|im_end|>") == 2  # the model learns to stop


def test_too_long_examples_are_truncated_or_skipped_and_counted(tokenizer):
    long = Example([{"role": "user", "content": "word " * 200}, {"role": "assistant", "content": "ok"}], "x")
    short = Example([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}], "y")
    answer_long = Example(
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yes " * 200}], "z"
    )
    cut = tokenize_examples(tokenizer, [long, short, answer_long], max_seq_len=64, too_long="truncate")
    # The long prompt leaves no assistant token after truncation: skipped. The long answer is cut.
    assert (cut.truncated, cut.skipped, len(cut.rows)) == (1, 1, 2)
    assert all(len(r["input_ids"]) <= 64 for r in cut.rows)
    skip = tokenize_examples(tokenizer, [long, short, answer_long], max_seq_len=64, too_long="skip")
    assert (skip.truncated, skip.skipped, len(skip.rows)) == (0, 2, 1)


def test_batches_pad_to_the_longest_row_and_mask_padding():
    batch = pad_batch(
        [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8], "labels": [8]}], 0
    )
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


def test_eval_split_is_seeded_and_never_empties_training():
    items = list(range(20))
    train, held = split_eval(items, 0.1, seed=3)
    assert len(held) == 2 and sorted(train + held) == items
    assert split_eval(items, 0.1, seed=3) == (train, held)
    assert split_eval([1], 0.5, seed=0) == ([1], [])
    assert len(split_eval([1, 2], 0.9, seed=0)[0]) == 1
