"""Retrieval: collections of documents (SQLite + FTS5 as the truth, FAISS as a derived index).

Names are imported lazily so that `core.errors` / `retrieval.settings` (imported by the
CLI at start-up) do not pull in FAISS and NumPy.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ragtune.retrieval.collection import Collection
    from ragtune.retrieval.library import Library
    from ragtune.retrieval.types import Document, Hit, UpsertResult

_WHERE = {
    "Collection": "ragtune.retrieval.collection",
    "Library": "ragtune.retrieval.library",
    "Document": "ragtune.retrieval.types",
    "Hit": "ragtune.retrieval.types",
    "UpsertResult": "ragtune.retrieval.types",
}
__all__ = ["Collection", "Document", "Hit", "Library", "UpsertResult"]


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'ragtune.retrieval' has no attribute {name!r}")
