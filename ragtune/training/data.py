"""Training data: load and validate chat examples, then tokenize them with assistant-only labels.

Accepted inputs (one format per record, detected from its keys):
- OpenAI messages: {"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}
- alpaca: {"instruction": str, "input": str (optional), "output": str}
- prompt / completion: {"prompt": str, "completion": str}
A `.jsonl` file holds one record a line; a folder is a `datasets.save_to_disk` folder (a
Dataset, or a DatasetDict whose "train" split is used and whose "test"/"validation" split, when
present, becomes the eval set). Everything is validated before training starts and every problem
is reported with its line (or row) number.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ragtune.core.errors import RagtuneError

ROLES = ("system", "user", "assistant")
MAX_REPORTED = 20  # problems listed in one error; the rest are counted
IGNORE_INDEX = -100  # label of tokens that carry no loss (prompt, template, padding)


class DataError(RagtuneError):
    """Training data is missing, malformed or unusable; the message names the line to fix."""

    code = "invalid_training_data"


@dataclass
class Example:
    """One conversation to learn from; `where` is 'file line N' or 'folder row N' for messages."""

    messages: list[dict[str, str]]
    where: str
    document_id: str | None = None  # the document that answers it (used with --collection)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class TokenizedSet:
    rows: list[dict[str, list[int]]]
    truncated: int = 0
    skipped: int = 0
    tokens: int = 0  # tokens in the kept rows
    label_tokens: int = 0  # of which carry loss


def to_messages(record: Any) -> list[dict[str, str]]:
    """Convert one record of any accepted format to chat messages; ValueError says what is wrong."""
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, got {type(record).__name__}")
    if "messages" in record:
        messages = record["messages"]
        if not isinstance(messages, list) or not messages:
            raise ValueError("'messages' is empty or not a list")
        out = []
        for i, m in enumerate(messages, start=1):
            if not isinstance(m, dict):
                raise ValueError(f"message {i} is not an object")
            role, content = m.get("role"), m.get("content")
            if role not in ROLES:
                raise ValueError(f"message {i} has role {role!r}; expected one of {', '.join(ROLES)}")
            if not isinstance(content, str):
                raise ValueError(f"message {i} ({role}) has no text 'content'")
            out.append({"role": role, "content": content})
        if not any(m["role"] == "assistant" and m["content"].strip() for m in out):
            raise ValueError("no non-empty assistant message to learn from")
        if not any(m["role"] == "user" for m in out):
            raise ValueError("no user message")
        return out
    if "instruction" in record or "output" in record:
        instruction, output = record.get("instruction"), record.get("output")
        extra_input = record.get("input") or ""
        if not isinstance(instruction, str) or not instruction.strip():
            raise ValueError("alpaca record lacks a non-empty 'instruction'")
        if not isinstance(output, str) or not output.strip():
            raise ValueError("alpaca record lacks a non-empty 'output'")
        if not isinstance(extra_input, str):
            raise ValueError("alpaca 'input' must be a string")
        user = f"{instruction}\n\n{extra_input}" if extra_input.strip() else instruction
        return [{"role": "user", "content": user}, {"role": "assistant", "content": output}]
    if "prompt" in record or "completion" in record:
        prompt, completion = record.get("prompt"), record.get("completion")
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError("prompt/completion record lacks a non-empty 'prompt'")
        if not isinstance(completion, str) or not completion.strip():
            raise ValueError("prompt/completion record lacks a non-empty 'completion'")
        return [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]
    keys = ", ".join(sorted(record)) or "none"
    raise ValueError(
        f"unknown record format (keys: {keys}); expected 'messages', "
        "'instruction'/'output' (alpaca) or 'prompt'/'completion'"
    )


def _examples(records: Iterable[tuple[str, Any]], source: str) -> list[Example]:
    examples, problems, count = [], [], 0
    for where, record in records:
        count += 1
        try:
            messages = to_messages(record)
        except ValueError as exc:
            problems.append(f"{where}: {exc}")
            continue
        doc = record.get("document_id") if isinstance(record, dict) else None
        examples.append(Example(messages, where, str(doc) if doc is not None else None))
    if problems:
        shown = problems[:MAX_REPORTED]
        more = f"\n  ... and {len(problems) - len(shown)} more" if len(problems) > len(shown) else ""
        raise DataError(
            f"{len(problems)} of {count} records in {source} are invalid; fix them and retry:\n  "
            + "\n  ".join(shown)
            + more,
            param="data",
        )
    if not examples:
        raise DataError(f"{source} holds no examples", param="data")
    return examples


def _jsonl_records(path: Path) -> Iterable[tuple[str, Any]]:
    with path.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                yield f"{path.name} line {n}", json.loads(line)
            except json.JSONDecodeError as exc:
                yield f"{path.name} line {n}", _BadJson(exc)


class _BadJson:
    """Stands in for a line that is not JSON, so it is reported with the others."""

    def __init__(self, exc: json.JSONDecodeError):
        self.exc = exc


def load_examples(path: Path) -> tuple[list[Example], list[Example] | None]:
    """Load and validate `path`; returns (train examples, eval examples given by the data or None)."""
    if not path.exists():
        raise DataError(f"--data {path}: no such file or folder", param="data")
    if path.is_dir():
        return _load_datasets_folder(path)
    if path.suffix not in (".jsonl", ".json"):
        raise DataError(f"--data {path}: expected a .jsonl file or a datasets folder", param="data")
    records = list(_jsonl_records(path))
    bad_json = [(w, r) for w, r in records if isinstance(r, _BadJson)]
    if bad_json:
        lines = [f"{w}: invalid JSON ({r.exc.msg} at column {r.exc.colno})" for w, r in bad_json]
        raise DataError(
            f"{len(bad_json)} lines of {path} are not JSON; fix them and retry:\n  "
            + "\n  ".join(lines[:MAX_REPORTED]),
            param="data",
        )
    return _examples(records, str(path)), None


def _load_datasets_folder(path: Path) -> tuple[list[Example], list[Example] | None]:
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as exc:
        raise DataError(
            f"--data {path}: not a datasets folder saved with save_to_disk ({exc})", param="data"
        ) from None
    if isinstance(loaded, datasets.DatasetDict):
        if "train" not in loaded:
            raise DataError(f"--data {path}: the DatasetDict has no 'train' split", param="data")
        train = _examples(
            ((f"{path.name}[train] row {i}", r) for i, r in enumerate(loaded["train"])), str(path)
        )
        held = next((s for s in ("test", "validation") if s in loaded), None)
        if held is None:
            return train, None
        rows = ((f"{path.name}[{held}] row {i}", r) for i, r in enumerate(loaded[held]))
        return train, _examples(rows, f"{path}[{held}]")
    return _examples(((f"{path.name} row {i}", r) for i, r in enumerate(loaded)), str(path)), None


def fingerprint(examples: Sequence[Example]) -> str:
    """A stable id of the conversations (after format conversion), recorded in the manifest."""
    h = hashlib.sha256()
    for ex in examples:
        h.update(json.dumps(ex.messages, sort_keys=True, ensure_ascii=False).encode())
        h.update(b"\n")
    return h.hexdigest()[:16]


def tokenize_chat(tokenizer: Any, messages: list[dict[str, str]]) -> tuple[list[int], list[int]]:
    """Token ids of the conversation in the model's chat template, and labels that keep only
    assistant turns (their text and end-of-turn token); everything else is IGNORE_INDEX.

    Each assistant span is found by rendering the conversation up to that turn: the prefix with a
    generation prompt must be a token prefix of the longer rendering, which holds for ChatML and
    other templates that only append. Templates that rewrite earlier turns raise DataError.
    """

    def render(msgs: list[dict[str, str]], gen: bool) -> list[int]:
        ids = tokenizer.apply_chat_template(msgs, tokenize=True, add_generation_prompt=gen)
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):  # BatchEncoding in transformers 5
            ids = ids["input_ids"]
        return list(ids)

    full = render(messages, False)
    labels = [IGNORE_INDEX] * len(full)
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        start = len(render(messages[:i], True))
        upto = render(messages[: i + 1], False)
        if full[: len(upto)] != upto or start > len(upto):
            raise DataError(
                "the base model's chat template does not render conversations by appending turns; "
                "assistant-only labels cannot be located (use a ChatML-style template)"
            )
        labels[start : len(upto)] = full[start : len(upto)]
    return full, labels


def tokenize_examples(
    tokenizer: Any,
    examples: Sequence[Example],
    *,
    max_seq_len: int,
    too_long: Literal["truncate", "skip"] = "truncate",
) -> TokenizedSet:
    """Tokenize every example; over-long ones are cut to `max_seq_len` or skipped and counted.

    A truncated example that keeps no assistant token is skipped too (it would teach nothing).
    """
    out = TokenizedSet(rows=[])
    for ex in examples:
        ids, labels = tokenize_chat(tokenizer, ex.messages)
        if len(ids) > max_seq_len:
            if too_long == "skip":
                out.skipped += 1
                continue
            ids, labels = ids[:max_seq_len], labels[:max_seq_len]
            if all(x == IGNORE_INDEX for x in labels):
                out.skipped += 1
                continue
            out.truncated += 1
        out.rows.append({"input_ids": ids, "labels": labels})
        out.tokens += len(ids)
        out.label_tokens += sum(1 for x in labels if x != IGNORE_INDEX)
    return out


def pad_batch(rows: Sequence[dict[str, list[int]]], pad_id: int) -> dict[str, Any]:
    """Right-pad a batch to its longest row (not to max_seq_len): padding costs compute on CPU."""
    import torch

    width = max(len(r["input_ids"]) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        n = len(r["input_ids"])
        ids[i, :n] = torch.tensor(r["input_ids"])
        labels[i, :n] = torch.tensor(r["labels"])
        mask[i, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}
