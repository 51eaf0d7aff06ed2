"""A QA set's passages in a scratch collection, for the benchmarks that replay retrieval and
grounding's decisions without an engine (bench.floor, bench.quote_rank, bench.polar,
bench.names)."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ragtune.retrieval import Collection, Document, Library
from ragtune.retrieval.settings import RetrievalSettings
from ragtune.training.qa import QASet, load_qa_set


@contextmanager
def collection_of(dataset: Path) -> Iterator[tuple[QASet, Collection]]:
    """The QA set and a scratch collection of its passages, with the default retrieval
    settings; gone when the block ends."""
    qa = load_qa_set(dataset)
    with tempfile.TemporaryDirectory(prefix="ragtune-bench-") as scratch:
        library = Library(Path(scratch), RetrievalSettings())
        try:
            coll = library.create("bench")
            coll.upsert([Document(id=p.id, text=p.text, title=p.title or None) for p in qa.passages.values()])
            yield qa, coll
        finally:
            library.close()
