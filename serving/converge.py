"""Adapters and profiles that survive restarts and agree across replicas.

An HTTP change is written to the record (serving/records.py) before it is served; a change
that cannot be recorded is not made. At start the record is applied on top of the config, and
`run` polls it every `serving.registry_poll_s` seconds for the rows other replicas (and this
one) wrote. An adapter is served under a recorded name only with the recorded fingerprint:
a missing folder or other content is logged and not served, and another version loaded under
that name is unloaded.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import suppress
from typing import Any

from pydantic import ValidationError

from retrieval.errors import RagtuneError, StoreUnavailable
from serving.adapters import AdapterNotFound, AdapterRegistry, LoadedAdapter
from serving.engine import AdapterRef
from serving.records import Kind, Records, Row
from serving.resolve import ModelResolver
from serving.settings import ProfileSettings

log = logging.getLogger("ragtune.serving")


class Converger:
    def __init__(self, records: Records, adapters: AdapterRegistry, resolver: ModelResolver):
        self.records = records
        self.adapters = adapters
        self.resolver = resolver
        self.seen = 0  # the last seq applied
        self._lock = asyncio.Lock()  # one pass over the rows at a time; profile writes wait for it

    # -- changes over HTTP ---------------------------------------------------------------
    async def _put(self, kind: Kind, name: str, value: dict[str, Any] | None) -> int:
        return await asyncio.to_thread(self.records.put, kind, name, value)

    async def load_adapter(self, name: str, path: str) -> tuple[LoadedAdapter, bool]:
        async def record(ref: AdapterRef) -> None:
            value = {"path": self.adapters.relative_path(ref.path), "fingerprint": ref.fingerprint}
            await self._put("adapter", name, value)

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
        try:
            profile = ProfileSettings.model_validate(value)
        except ValidationError as exc:
            log.error("profile %s recorded in the store is not served: %s", name, exc)
            self.resolver.remove_profile(name)
            return
        # Kept even when its adapter is not (yet) here: requests for it get a clear 404.
        self.resolver.set_profile(name, profile)

    async def _apply_adapter(self, name: str, value: dict[str, Any] | None) -> None:
        current = self.adapters.get(name)
        if value is None:
            if current is not None:
                with suppress(AdapterNotFound):
                    await self.adapters.unload(name)
            return
        path, fingerprint = str(value["path"]), str(value["fingerprint"])
        try:
            folder = self.adapters.resolve_path(path)
            if current is not None and (current.ref.fingerprint, current.ref.path) == (fingerprint, folder):
                return  # already served (this replica's own writes come back too)
            if not folder.is_dir():
                raise AdapterNotFound(
                    f"its folder {folder} is missing (recorded fingerprint {fingerprint}); copy the "
                    "adapter there, the same files on every replica"
                )
            await self.adapters.load(name, path, fingerprint=fingerprint)
        except RagtuneError as exc:
            log.error("adapter %s recorded in the store is not served: %s", name, exc.message)
            current = self.adapters.get(name)
            if current is not None and current.ref.fingerprint != fingerprint:
                with suppress(AdapterNotFound):
                    await self.adapters.unload(name)  # never another version under this name
