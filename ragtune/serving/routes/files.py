"""File upload into a collection: `POST /v1/collections/{name}/files` (multipart/form-data).

The files go through the loaders `ragtune ingest` uses (UPLOAD_SUFFIXES: .txt .md .markdown
.html .htm .pdf), one document each, named by the file's name unless an `id` is given: uploading
a file again replaces it. The playground's file picker offers the same list.
"""

from __future__ import annotations

import asyncio
import tempfile
from dataclasses import replace
from pathlib import Path, PureWindowsPath
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, UploadFile

from ragtune.core.errors import InvalidDocument
from ragtune.retrieval import Document
from ragtune.retrieval.ingest import SUFFIXES, load_file
from ragtune.serving.deps import LibraryDep
from ragtune.serving.resources import UpsertResponse

# What load_file reads: every type `ragtune ingest` takes but a BEIR corpus (.jsonl), which is
# many documents, not one file's.
UPLOAD_SUFFIXES = tuple(s for s in SUFFIXES if s != ".jsonl")

router = APIRouter(prefix="/v1/collections")


@router.post("/{name}/files", response_model=UpsertResponse)
async def upload_files(
    name: str,
    library: LibraryDep,
    file: Annotated[list[UploadFile], File(description=f"one or more {' '.join(UPLOAD_SUFFIXES)} files")],
    id: Annotated[str | None, Form(description="document id for a single file (default: its name)")] = None,
) -> dict[str, Any]:
    coll = await asyncio.to_thread(library.open, name)  # an unknown collection is a 404 before any read
    if id is not None and len(file) != 1:
        raise InvalidDocument("`id` names one document: upload one file with it", param="id")
    with tempfile.TemporaryDirectory(prefix="ragtune-upload-") as tmp:
        docs = [await _load(upload, Path(tmp) / str(n), id) for n, upload in enumerate(file)]
    result = await asyncio.to_thread(coll.upsert, docs)
    return {"added": result.added, "updated": result.updated, "unchanged": result.unchanged}


async def _load(upload: UploadFile, folder: Path, doc_id: str | None) -> Document:
    # A client may send a whole path (either slash) as the file name: keep the last part.
    filename = PureWindowsPath(upload.filename or "").name
    if not filename:
        raise InvalidDocument("every uploaded file needs a file name", param="file")
    folder.mkdir()
    path = folder / filename
    path.write_bytes(await upload.read())
    try:
        doc = await asyncio.to_thread(load_file, path, doc_id or filename, {"filename": filename})
    except InvalidDocument as exc:  # the loaders name the file by its temporary path
        raise InvalidDocument(exc.message.replace(str(path), filename), param="file") from None
    return replace(doc, source=filename)
