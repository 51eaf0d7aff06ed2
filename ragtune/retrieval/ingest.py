"""Files -> Documents (.txt .md .markdown .html .htm .pdf, and BEIR corpus .jsonl), and `sync` of a folder.

Every loader raises InvalidDocument naming the file and what is wrong with it, so the CLI can
refuse a whole batch before anything is written.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ragtune.core.errors import InvalidDocument
from ragtune.retrieval.collection import Collection
from ragtune.retrieval.types import Document

TEXT_SUFFIXES = (".txt", ".md", ".markdown")
HTML_SUFFIXES = (".html", ".htm")
SUFFIXES = (*TEXT_SUFFIXES, *HTML_SUFFIXES, ".pdf", ".jsonl")


def read_utf8(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvalidDocument(
            f"{path}: not UTF-8 text (byte {exc.start} is 0x{data[exc.start]:02x}); convert it, "
            "e.g. `iconv -f latin1 -t utf-8`",
            param="path",
        ) from None


def _markdown_title(text: str) -> str | None:
    m = re.search(r"^#\s+(.+?)\s*#*\s*$", text, re.MULTILINE)
    return m.group(1) if m else None


def load_html(path: Path) -> tuple[str | None, str]:
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(read_utf8(path), "html.parser")
    for tag in soup(["script", "style", "noscript", "template"]):
        tag.decompose()
    title = soup.title.get_text(strip=True) if soup.title else None
    if soup.title:
        soup.title.decompose()
    body = soup.body or soup
    text = re.sub(r"\n\s*\n+", "\n\n", body.get_text("\n")).strip()
    if not title:
        h1 = soup.find("h1")
        title = h1.get_text(strip=True) if h1 else None
    return title or None, text


def load_pdf(path: Path) -> tuple[str | None, str]:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(str(path))
        pages = [page.extract_text() or "" for page in reader.pages]
        title = reader.metadata.title if reader.metadata else None
    except (PdfReadError, ValueError, OSError) as exc:
        raise InvalidDocument(f"{path}: not a readable PDF ({exc})", param="path") from None
    return (str(title) if title else None), "\n\n".join(p.strip() for p in pages if p.strip())


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_file(path: Path, doc_id: str, extra: dict[str, Any] | None = None) -> Document:
    """One file as one Document; `extra` is merged into its metadata."""
    suffix = path.suffix.lower()
    if suffix in TEXT_SUFFIXES:
        text = read_utf8(path)
        title = _markdown_title(text) if suffix != ".txt" else None
    elif suffix in HTML_SUFFIXES:
        title, text = load_html(path)
    elif suffix == ".pdf":
        title, text = load_pdf(path)
    else:
        readable = [s for s in SUFFIXES if s != ".jsonl"]  # a .jsonl is a corpus (`ragtune ingest`)
        raise InvalidDocument(f"{path}: unsupported file type {suffix!r}; use one of {', '.join(readable)}")
    if not text.strip():
        raise InvalidDocument(f"{path}: no text in this file", param="path")
    metadata = {"path": doc_id, "type": suffix.lstrip("."), "file_sha256": file_sha256(path), **(extra or {})}
    return Document(doc_id, text, title or path.stem, str(path), metadata)


def load_beir(path: Path) -> Iterator[Document]:
    """A BEIR corpus: one JSON object a line with `_id`, `text`, optional `title`; other keys -> metadata."""
    with path.open("rb") as fh:
        for n, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError:
                raise InvalidDocument(f"{path}:{n}: not UTF-8", param="path") from None
            except json.JSONDecodeError as exc:
                raise InvalidDocument(f"{path}:{n}: not JSON ({exc.msg})", param="path") from None
            if not isinstance(row, dict) or "_id" not in row or "text" not in row:
                raise InvalidDocument(f"{path}:{n}: a BEIR corpus line needs '_id' and 'text'", param="path")
            meta = {k: v for k, v in row.items() if k not in ("_id", "text", "title")}
            title = row.get("title") or None
            yield Document(str(row["_id"]), str(row["text"]), title, f"{path}:{n}", meta)


def find_files(root: Path) -> list[Path]:
    if root.is_file():
        return [root]
    return sorted(
        p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES and not _hidden(p, root)
    )


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def collect(paths: Sequence[Path]) -> list[Document]:
    """Documents for `ragtune ingest PATH...`: a file's id is its name, a folder's files are
    named by their path inside it and marked as that folder's, exactly as `sync` makes them, so
    a later `sync` of the folder sees them unchanged and deletes those whose files are gone.
    All files are read before any write."""
    docs: list[Document] = []
    for path in paths:
        if not path.exists():
            raise InvalidDocument(f"{path}: no such file or folder", param="path")
        if path.is_dir():
            found = find_files(path)
            for corpus in (f for f in found if f.suffix.lower() == ".jsonl"):
                docs.extend(load_beir(corpus))
            docs.extend(sync_documents(path, [f for f in found if f.suffix.lower() != ".jsonl"]))
        elif path.suffix.lower() == ".jsonl":
            docs.extend(load_beir(path))
        else:
            docs.append(load_file(path, path.name))
    seen: dict[str, None] = {}
    for doc in docs:
        if doc.id in seen:
            raise InvalidDocument(f"two inputs have the id {doc.id!r}; ingest them separately", param="path")
        seen[doc.id] = None
    return docs


def upsert_batches(
    collection: Collection,
    docs: Sequence[Document],
    *,
    batch_size: int = 64,
    progress: Callable[[int], None] | None = None,
) -> dict[str, int]:
    """Upsert in batches, each atomic: a crash loses at most the batch in flight."""
    totals = {"added": 0, "updated": 0, "unchanged": 0}
    for lo in range(0, len(docs), batch_size):
        batch = docs[lo : lo + batch_size]
        result = collection.upsert(batch)
        totals["added"] += len(result.added)
        totals["updated"] += len(result.updated)
        totals["unchanged"] += len(result.unchanged)
        if progress is not None:
            progress(len(batch))
    return totals


@dataclass
class SyncPlan:
    changed: list[Path]
    unchanged: list[str]
    gone: list[str]


def plan_sync(collection: Collection, root: Path) -> SyncPlan:
    """Compare a folder with the documents synced from it before (metadata `sync_root`)."""
    key = str(root.resolve())
    known = collection.metadata_where({"sync_root": key})
    files = [f for f in find_files(root) if f.suffix.lower() != ".jsonl"]
    changed, unchanged = [], []
    for file in files:
        doc_id = file.relative_to(root).as_posix()
        meta = known.get(doc_id)
        if meta is not None and meta.get("file_sha256") == file_sha256(file):
            unchanged.append(doc_id)
        else:
            changed.append(file)
    present = {f.relative_to(root).as_posix() for f in files}
    return SyncPlan(changed, unchanged, sorted(set(known) - present))


def sync_documents(root: Path, files: Sequence[Path]) -> list[Document]:
    key = str(root.resolve())
    return [load_file(f, f.relative_to(root).as_posix(), {"sync_root": key}) for f in files]
