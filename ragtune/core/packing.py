"""An adapter folder's files as one blob: what the document store keeps so that a replica
without the folder can serve the recorded version (serving/records.py, serving/converge.py)."""

from __future__ import annotations

import io
import os
import shutil
import tarfile
import uuid
from pathlib import Path

from ragtune.core.adapters import AdapterError

STORE_COPIES = ".store"  # adapters/.store/FINGERPRINT/: adapters unpacked from the document store


def pack_adapter(path: Path, *, root: Path | None = None) -> bytes:
    """The adapter folder's files as one uncompressed tar: what the store keeps so that a replica
    without the folder can serve it. A linked file is packed by content when it resolves inside
    `root` (default: the adapter folder), else left out."""
    top = (root or path).resolve()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", dereference=True) as tar:
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            if top in f.resolve().parents:
                tar.add(f, arcname=f.relative_to(path).as_posix(), recursive=False)
    return buf.getvalue()


def unpack_adapter(data: bytes, dest: Path) -> None:
    """Write a `pack_adapter` tar to the folder `dest`, whole or not at all: it is unpacked into a
    hidden folder beside `dest` and renamed into place. A `dest` that already exists is kept."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".unpack-{dest.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            tar.extractall(tmp, filter="data")  # no absolute paths, '..', links or devices
        try:
            tmp.rename(dest)
        except OSError:
            if not dest.is_dir():  # else another process unpacked the same content first
                raise
    except (tarfile.TarError, OSError) as exc:
        raise AdapterError(f"cannot unpack the adapter's files into {dest}: {exc}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
