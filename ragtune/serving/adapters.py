"""Adapters loaded into the running engine, swapped without a restart.

Each load gets a new version; the name points at the newest. A request takes a reference to
the version it started with (`use`), so a replaced adapter finishes its requests in flight
before it is removed from the engine.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from ragtune.core.adapters import AdapterInfo, inspect_adapter
from ragtune.core.errors import ConflictError, NotFoundError, RagtuneError
from ragtune.core.merge import correction
from ragtune.serving.canary import Canary
from ragtune.serving.engine import AdapterRef, Engine
from ragtune.serving.errors import AdapterRejected, EngineUnhealthy

log = logging.getLogger("ragtune.serving")


class AdapterNotFound(NotFoundError):
    code = "adapter_not_found"


class AdapterPathError(RagtuneError):
    code = "invalid_adapter_path"


class MergedAdapterFixed(ConflictError):
    """The adapter merged into the engine's weights changes only with a restart."""

    code = "adapter_merged"


class BaseNotServed(RagtuneError):
    """The engine runs an adapter merged in, with LoRA off: nothing can take it back out."""

    code = "model_not_served"


def adapter_folder(root: Path, path: str) -> Path:
    """`path` resolved inside the adapters folder `root` (resolved; a bare name means root/NAME)."""
    # No `~` expansion: a client names folders under adapters/, not the server user's home.
    try:
        candidate = Path(path)
        if not candidate.is_absolute():
            candidate = root / candidate
        resolved = candidate.resolve()
        resolved.exists()  # raises for a component longer than the file system allows
    except (ValueError, OSError, RuntimeError) as exc:  # NUL bytes, names too long, loops
        raise AdapterPathError(f"adapter path is not usable: {exc}", param="path") from None
    if resolved != root and root not in resolved.parents:
        raise AdapterPathError(
            f"adapter path {path!r} is outside the adapters folder {root}; "
            "copy the adapter there and pass its folder name",
            param="path",
        )
    return resolved


@dataclass(frozen=True)
class Merged:
    """The adapter the engine's weights hold (serving.merged), and the folder of those weights."""

    info: AdapterInfo
    folder: Path
    lora: bool  # whether the engine has LoRA on: the base and other adapters need it

    @property
    def name(self) -> str:
        return self.info.name


class AdapterChanged(ConflictError):
    """The folder no longer holds the adapter recorded under its name."""

    code = "adapter_fingerprint_mismatch"


# Called with the new version once the engine has it, before it is served: a raise unloads it.
Record = Callable[[AdapterRef], Awaitable[object]]


@dataclass
class LoadedAdapter:
    ref: AdapterRef
    info: AdapterInfo
    loaded_at: float = field(default_factory=time.time)
    in_flight: int = 0
    retired: bool = False

    @property
    def name(self) -> str:
        return self.ref.name


class AdapterRegistry:
    def __init__(
        self,
        engine: Engine,
        *,
        adapters_dir: Path,
        base_model_path: Path,
        max_lora_rank: int,
        merged: Merged | None = None,
    ):
        self._engine = engine
        self._merged = merged
        self._base_ref: AdapterRef | None = None  # with a merge: the correction back to the base
        self._dir = adapters_dir.resolve()
        self._base = base_model_path
        self._max_rank = max_lora_rank
        self._current: dict[str, LoadedAdapter] = {}
        self._versions = itertools.count(1)
        self._lock = asyncio.Lock()
        self._pending_removal: list[LoadedAdapter] = []
        self.canary: Canary | None = None  # set once the engine's reference answer is known

    async def start(self) -> None:
        """With a merge: list the merged adapter (it needs no LoRA) and load the base model's
        correction into the engine (with LoRA on)."""
        merged = self._merged
        if merged is None:
            return
        ref = AdapterRef(name=merged.name, version=next(self._versions), path=merged.info.path,
                         fingerprint=merged.info.fingerprint)  # fmt: skip
        self._current[merged.name] = LoadedAdapter(ref=ref, info=merged.info)
        if merged.lora:
            folder = await asyncio.to_thread(correction, merged.folder, merged.info, None)
            self._base_ref = AdapterRef(
                name="base", version=next(self._versions), path=folder, engine_path=folder
            )
            await self._engine.add_adapter(self._base_ref)

    @property
    def merged(self) -> Merged | None:
        return self._merged

    @property
    def root(self) -> Path:
        """The adapters folder (resolved)."""
        return self._dir

    def resolve_path(self, path: str) -> Path:
        """An adapter path is a folder inside the adapters folder (a bare name means adapters/NAME)."""
        return adapter_folder(self._dir, path)

    def relative_path(self, folder: Path) -> str:
        """A loaded adapter's folder as a path under the adapters folder (what `load` takes)."""
        return folder.relative_to(self._dir).as_posix()

    async def load(
        self, name: str, path: str, *, fingerprint: str | None = None, record: Record | None = None
    ) -> tuple[LoadedAdapter, bool]:
        """Load (or replace) `name`; returns the new entry and whether it replaced one.

        `fingerprint`: refuse a folder whose content has another. `record`: see `Record`."""
        folder = self.resolve_path(path)
        # Every check that can be made on disk runs before the engine is touched.
        try:
            info = await asyncio.to_thread(
                inspect_adapter,
                folder,
                base_model_path=self._base,
                max_lora_rank=self._max_rank,
                root=self._dir,
            )
        except RagtuneError as exc:
            exc.param = exc.param or "path"  # every problem found here is the folder's
            raise
        if fingerprint is not None and info.fingerprint != fingerprint:
            raise AdapterChanged(
                f"its folder {folder} holds fingerprint {info.fingerprint}, not the recorded "
                f"{fingerprint}; copy the same files to every replica, or load it again",
                param="path",
            )
        engine_path = await self._correction_for(name, info)
        async with self._lock:
            ref = AdapterRef(
                name=name,
                version=next(self._versions),
                path=folder,
                fingerprint=info.fingerprint,
                engine_path=engine_path,
            )
            if self.canary is not None:
                await self.canary.check()  # never load onto an engine that is already wrong
            try:
                await self._engine.add_adapter(ref)
            except Exception as exc:  # the engine's own loader rejected it
                raise RagtuneError(
                    f"the engine could not load adapter {name!r} from {folder}: {exc}",
                    param="path",
                    code="invalid_adapter",
                ) from exc
            if self.canary is not None:
                await self._probe(self.canary, ref)
            if record is not None:
                try:
                    await record(ref)
                except BaseException:
                    await self._engine.remove_adapter(ref)  # never served: nothing half-applied
                    raise
            old = self._current.get(name)
            self._current[name] = LoadedAdapter(ref=ref, info=info)
            if old is not None:
                await self._retire(old)
            log.info("adapter %s loaded from %s (rank %d)", name, folder, info.rank)
            return self._current[name], old is not None

    async def _correction_for(self, name: str, info: AdapterInfo) -> Path | None:
        """On an engine with an adapter merged in: the LoRA that serves `info` there."""
        merged = self._merged
        if merged is None:
            return None
        if name == merged.name:
            raise MergedAdapterFixed(
                f"adapter {name!r} is merged into the engine's weights (serving.merge); restart the "
                "server to serve another version of it",
                param="name",
            )
        if not merged.lora:
            raise BaseNotServed(
                f"adapter {name!r} cannot load: the engine runs {merged.name!r} merged into its weights "
                "with LoRA off; start it with LoRA on (RAGTUNE_ENGINE__ENABLE_LORA=true) to serve other "
                "adapters beside the merged one",
                param="path",
            )
        return await asyncio.to_thread(correction, merged.folder, merged.info, info)

    async def _probe(self, canary: Canary, ref: AdapterRef) -> None:
        """After a load: the adapter answers, and the base model's answer is unchanged; else the
        adapter is unloaded and refused, and the engine is checked once more."""
        own = await canary.answer(ref)
        base = await canary.answer()
        if own.strip() and base == canary.reference:
            return
        problem = (
            f"with it loaded the base model's canary answer changed from {canary.reference!r} to {base!r}"
            if base != canary.reference
            else "its own greedy answer to the canary question is empty"
        )
        await self._engine.remove_adapter(ref)
        after = await canary.answer()
        if after != canary.reference:
            canary.poisoned = (
                f"adapter {ref.name!r} from {ref.path} poisoned the engine: {problem}, and unloading it "
                f"did not mend it ({after!r}); restart the server"
            )
            log.error(canary.poisoned)
            raise EngineUnhealthy(canary.poisoned)
        raise AdapterRejected(
            f"adapter {ref.name!r} from {ref.path} was unloaded and refused: {problem}. Its weights "
            "passed the checks on disk, so they are probably extreme (a diverged training run); "
            "retrain it",
            param="path",
        )

    async def unload(self, name: str, *, record: Callable[[], Awaitable[object]] | None = None) -> None:
        """Unload `name`; `record` runs first, and a raise there leaves the adapter loaded."""
        async with self._lock:
            if name not in self._current:
                raise AdapterNotFound(f"adapter {name!r} is not loaded", param="name")
            if self._merged is not None and name == self._merged.name:
                raise MergedAdapterFixed(
                    f"adapter {name!r} is merged into the engine's weights; restart the server without "
                    "serving.merge to unload it",
                    param="name",
                )
            if record is not None:
                await record()
            entry = self._current.pop(name)
            await self._retire(entry)
            log.info("adapter %s unloaded", name)

    async def _retire(self, entry: LoadedAdapter) -> None:
        entry.retired = True
        if entry.in_flight == 0:
            await self._engine.remove_adapter(entry.ref)
        else:
            self._pending_removal.append(entry)

    async def collect(self) -> None:
        """Remove retired versions whose last request has finished."""
        done = [e for e in self._pending_removal if e.in_flight == 0]
        for entry in done:
            self._pending_removal.remove(entry)
            await self._engine.remove_adapter(entry.ref)

    def get(self, name: str) -> LoadedAdapter | None:
        return self._current.get(name)

    def names(self) -> list[str]:
        return sorted(self._current)

    def entries(self) -> list[LoadedAdapter]:
        return [self._current[n] for n in self.names()]

    @contextmanager
    def use(self, name: str) -> Iterator[AdapterRef | None]:
        """The version a request runs on, held while it runs (None: no LoRA, the merged one)."""
        entry = self._current.get(name)
        if entry is None:
            raise AdapterNotFound(f"adapter {name!r} is not loaded", param="model")
        entry.in_flight += 1
        try:
            yield None if self._merged is not None and name == self._merged.name else entry.ref
        finally:
            entry.in_flight -= 1

    def base(self) -> AdapterRef | None:
        """What a request for the base model runs on: no LoRA, or the correction from a merge."""
        if self._merged is not None and self._base_ref is None:
            raise BaseNotServed(
                f"the base model is not served: the engine runs {self._merged.name!r} merged into its "
                "weights with LoRA off; ask for that model, or start with LoRA on "
                "(RAGTUNE_ENGINE__ENABLE_LORA=true)",
                param="model",
            )
        return self._base_ref
