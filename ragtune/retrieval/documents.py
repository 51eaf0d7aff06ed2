"""What a document must be before it is stored, and its content hash (the dedupe key)."""

from __future__ import annotations

import hashlib
import json
import unicodedata
from typing import Any

from ragtune.core.errors import DocumentTooLarge, InvalidDocument, RagtuneError
from ragtune.retrieval.types import Document

MAX_ID_CHARS = 1024
# Bidi controls change how an id reads (U+202E shows "gpj.exe" as "exe.jpg"); C0 and C1 controls
# (NUL first) break terminals, logs and PostgreSQL. Ids stored before this rule are left as they are.
_BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def id_problem(doc_id: str) -> str | None:
    """Why `doc_id` cannot name a new document (a control character), or None."""
    for ch in doc_id:
        if ch in _BIDI_CONTROLS or unicodedata.category(ch) == "Cc":
            return f"document id {doc_id!r} holds the control character U+{ord(ch):04X}; use printable text"
    return None


def content_hash(doc: Document) -> str:
    payload = json.dumps([doc.text, doc.title, doc.source, doc.metadata], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()


def validate_document(doc: Any, max_chars: int) -> None:
    if not isinstance(doc, Document):
        raise InvalidDocument(f"expected a Document, got {type(doc).__name__}")
    if not isinstance(doc.id, str) or not doc.id.strip():
        raise InvalidDocument("a document needs a non-empty string id", param="id")
    if len(doc.id) > MAX_ID_CHARS:
        raise InvalidDocument(f"document id is {len(doc.id)} characters; at most {MAX_ID_CHARS}", param="id")
    problem = id_problem(doc.id)
    if problem:
        raise InvalidDocument(problem, param="id")
    if not isinstance(doc.text, str) or not doc.text.strip():
        raise InvalidDocument(f"document {doc.id!r} has no text", param="text")
    if len(doc.text) > max_chars:
        raise DocumentTooLarge(
            f"document {doc.id!r} has {len(doc.text):,} characters; the limit is {max_chars:,} "
            "(split it, or raise RAGTUNE_RETRIEVAL__MAX_DOCUMENT_CHARS)",
            param="text",
        )
    for name in ("title", "source"):
        value = getattr(doc, name)
        if value is not None and not isinstance(value, str):
            raise InvalidDocument(f"document {doc.id!r}: {name} must be a string or null", param=name)
    if not isinstance(doc.metadata, dict):
        raise InvalidDocument(f"document {doc.id!r}: metadata must be a JSON object", param="metadata")
    try:
        json.dumps(doc.metadata, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidDocument(f"document {doc.id!r}: metadata is not JSON: {exc}", param="metadata") from None


def check_chunking(chunk_tokens: int, overlap: int, max_tokens: int) -> None:
    if chunk_tokens > max_tokens:
        raise RagtuneError(
            f"chunk_tokens={chunk_tokens} exceeds the embedder's {max_tokens}-token window; "
            f"set RAGTUNE_RETRIEVAL__CHUNK_TOKENS (or --chunk-tokens) to at most {max_tokens}",
            param="chunk_tokens",
        )
    if not 0 <= overlap < chunk_tokens:
        raise RagtuneError(
            f"chunk_overlap={overlap} must be at least 0 and below chunk_tokens={chunk_tokens}",
            param="chunk_overlap",
        )
