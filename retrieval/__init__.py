"""Retrieval: collections of documents (SQLite + FTS5 as the truth, FAISS as a derived index).

Names are imported lazily so that `core.errors` / `retrieval.settings` (imported by the
CLI at start-up) do not pull in FAISS and NumPy.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from retrieval.collection import Collection
    from retrieval.library import Library
    from retrieval.types import Document, Hit, UpsertResult

_WHERE = {
    "Collection": "retrieval.collection",
    "Library": "retrieval.library",
    "Document": "retrieval.types",
    "Hit": "retrieval.types",
    "UpsertResult": "retrieval.types",
}
__all__ = ["Collection", "Document", "Hit", "Library", "UpsertResult"]


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'retrieval' has no attribute {name!r}")
