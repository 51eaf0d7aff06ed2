"""Adapters and profiles that survive restarts and agree across replicas.

An HTTP change is written to the record (serving/records.py) before it is served; a change
that cannot be recorded is not made. At start the record is applied on top of the config, and
`run` polls it every `serving.registry_poll_s` seconds for the rows other replicas (and this
one) wrote. An adapter is served under a recorded name only with the recorded fingerprint.
Its files travel in the store: a replica whose folder is missing or holds other content
unpacks the recorded version into adapters/.store/FINGERPRINT/ and serves that. When the store
has no copy either, the adapter is logged and not served, and another version loaded under that
name is unloaded.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from contextlib import suppress
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ragtune.core.adapters import adapter_fingerprint
from ragtune.core.errors import RagtuneError, StoreUnavailable
from ragtune.core.packing import STORE_COPIES, pack_adapter, unpack_adapter
from ragtune.serving.adapters import AdapterNotFound, AdapterRegistry, LoadedAdapter
from ragtune.serving.engine import AdapterRef
from ragtune.serving.options import REMOVED
from ragtune.serving.records import Kind, Records, Row
from ragtune.serving.resolve import ModelResolver
from ragtune.serving.settings import ProfileSettings

log = logging.getLogger("ragtune.serving")


class Converger:
    def __init__(self, records: Records, adapters: AdapterRegistry, resolver: ModelResolver):
        self.records = records
        self.adapters = adapters
        self.resolver = resolver
        self.seen = 0  # the last seq applied
        self._lock = asyncio.Lock()  # one pass over the rows at a time; profile writes wait for it

    # -- changes over HTTP ---------------------------------------------------------------
    async def _put(
        self, kind: Kind, name: str, value: dict[str, Any] | None, files: tuple[str, bytes] | None = None
    ) -> int:
        return await asyncio.to_thread(self.records.put, kind, name, value, files=files)

    async def load_adapter(self, name: str, path: str) -> tuple[LoadedAdapter, bool]:
        async def record(ref: AdapterRef) -> None:
            value = {"path": self.adapters.relative_path(ref.path), "fingerprint": ref.fingerprint}
            packed = await asyncio.to_thread(pack_adapter, ref.path, root=self.adapters.root)
            await self._put("adapter", name, value, (ref.fingerprint, packed))

        return await self.adapters.load(name, path, record=record)

    async def unload_adapter(self, name: str) -> None:
        await self.adapters.unload(name, record=lambda: self._put("adapter", name, None))

    async def put_profile(self, name: str, profile: ProfileSettings) -> bool:
        """Returns True when it replaced a profile."""
        self.resolver.check_profile_name(name)
        replaced = name in self.resolver.profiles()
        seq = await self._put("profile", name, profile.model_dump())
        async with self._lock:
            if seq > self.seen:  # else a poll applied it, or a newer row, already
                self.resolver.set_profile(name, profile)
        return replaced

    async def delete_profile(self, name: str) -> None:
        self.resolver.get_profile(name)  # 404 when there is none
        seq = await self._put("profile", name, None)
        async with self._lock:
            if seq > self.seen:
                self.resolver.remove_profile(name)

    # -- following the record ------------------------------------------------------------
    async def catch_up(self) -> int:
        """Apply the rows written since the last pass (at start: every row); returns how many."""
        async with self._lock:
            rows = await asyncio.to_thread(self.records.since, self.seen)
            for row in rows:
                await self._apply(row)
                self.seen = row.seq
            return len(rows)

    async def run(self, interval: float) -> None:
        """Poll the record until cancelled; a lost store is logged once, and followed again when back."""
        lost = False
        while True:
            await asyncio.sleep(interval)
            try:
                await self.catch_up()
            except StoreUnavailable as exc:
                if not lost:
                    log.warning("adapters and profiles are not followed while the store is lost: %s", exc)
                lost = True
                continue
            except Exception:
                log.exception("applying the record of adapters and profiles failed")
                continue
            if lost:
                log.info("the store is back: adapters and profiles are followed again")
                lost = False

    async def _apply(self, row: Row) -> None:
        if row.kind == "profile":
            self._apply_profile(row.name, row.value)
        elif row.kind == "adapter":
            await self._apply_adapter(row.name, row.value)

    def _apply_profile(self, name: str, value: dict[str, Any] | None) -> None:
        if value is None:
            self.resolver.remove_profile(name)
            return
        if gone := sorted(set(value) & set(REMOVED)):
            log.warning("profile %s recorded in the store sets %s, removed options: served without them",
                        name, ", ".join(gone))  # fmt: skip
            value = {k: v for k, v in value.items() if k not in REMOVED}
        try:
            profile = ProfileSettings.model_validate(value)
        except ValidationError as exc:
            log.error("profile %s recorded in the store is not served: %s", name, exc)
            self.resolver.remove_profile(name)
            return
        # Kept even when its adapter is not (yet) here: requests for it get a clear 404.
        self.resolver.set_profile(name, profile)

    async def _apply_adapter(self, name: str, value: dict[str, Any] | None) -> None:
        merged = self.adapters.merged
        if merged is not None and name == merged.name:  # fixed in the weights until a restart
            log.warning("adapter %s recorded in the store is served merged into the weights; its "
                        "record applies after a restart without serving.merge", name)  # fmt: skip
            return
        current = self.adapters.get(name)
        if value is None:
            if current is not None:
                with suppress(AdapterNotFound):
                    await self.adapters.unload(name)
            return
        path, fingerprint = str(value["path"]), str(value["fingerprint"])
        try:
            if current is not None and current.ref.fingerprint == fingerprint:
                return  # already served (this replica's own writes come back too)
            folder = self.adapters.resolve_path(path)
            local = await asyncio.to_thread(_fingerprint_of, folder)
            if local != fingerprint:
                path = await self._store_copy(name, folder, local, fingerprint)
            await self.adapters.load(name, path, fingerprint=fingerprint)
        except StoreUnavailable:
            raise  # the row is applied again on the next pass
        except RagtuneError as exc:
            log.error("adapter %s recorded in the store is not served: %s", name, exc.message)
            current = self.adapters.get(name)
            if current is not None and current.ref.fingerprint != fingerprint:
                with suppress(AdapterNotFound):
                    await self.adapters.unload(name)  # never another version under this name

    async def _store_copy(self, name: str, folder: Path, local: str | None, fingerprint: str) -> str:
        """The recorded version's files, unpacked from the store (once per fingerprint): the
        path to load instead of `folder`, which is missing or holds other content."""
        copy = f"{STORE_COPIES}/{fingerprint}"
        target = self.adapters.resolve_path(copy)
        found = (
            f"is missing (recorded fingerprint {fingerprint})"
            if local is None
            else f"holds fingerprint {local}, not the recorded {fingerprint}"
        )
        if await asyncio.to_thread(_fingerprint_of, target) != fingerprint:
            packed = await asyncio.to_thread(self.records.files, fingerprint)
            if packed is None:
                raise AdapterNotFound(
                    f"its folder {folder} {found}, and the store holds no copy of that version; "
                    "copy the adapter there, or load it again"
                )
            await asyncio.to_thread(shutil.rmtree, target, True)  # a damaged copy of ours, if any
            await asyncio.to_thread(unpack_adapter, packed, target)
        log.info(
            "adapter %s: its folder %s %s; serving the store's copy of that version from %s",
            name,
            folder,
            found,
            target,
        )
        return copy


def _fingerprint_of(folder: Path) -> str | None:
    """The adapter fingerprint of `folder`, None when it holds no readable adapter."""
    try:
        return adapter_fingerprint(folder)
    except OSError:
        return None
