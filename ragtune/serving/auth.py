"""API keys: who may call what, checked by one FastAPI dependency per route.

`RAGTUNE_API_KEYS` may chat, search and list; `RAGTUNE_ADMIN_KEYS` may also change documents,
collections, adapters and profiles. `RAGTUNE_SCOPED_KEYS` are limited to some collections and
models (a `Scope`): every other collection and model is out of their reach, in lists too, and
adapters and profiles cannot be changed with them. Keys come as `Authorization: Bearer KEY`, are
compared in constant time and are never logged. With no keys set the server is open, and only a loopback
address may be bound (`check_exposure`). `/health` and the playground stay open; `/metrics`
takes an admin key or a loopback client.

What a key may use is also all it sees: lists leave out, and single routes answer 404 for, the
profiles and models outside its scope (as if they did not exist); only unscoped admin keys
(and any caller of a server with no keys) see the server's paths and adapter manifests.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from dataclasses import dataclass
from typing import Annotated, Literal

from fastapi import Depends, Request

from ragtune.serving.errors import Forbidden, Unauthorized
from ragtune.serving.settings import ProfileSettings, Settings, SettingsError

Role = Literal["user", "admin"]


@dataclass(frozen=True)
class Scope:
    """The collections and models a key may reach (None: all of them). `sees_server`: the key may
    see the server's own paths and adapter manifests (an admin key limited to nothing, or any
    caller of a server with no keys); other keys see names, ranks and fingerprints."""

    collections: frozenset[str] | None = None
    models: frozenset[str] | None = None
    sees_server: bool = False

    @property
    def limited(self) -> bool:
        return self.collections is not None or self.models is not None

    def allows_collection(self, name: str) -> bool:
        return self.collections is None or name in self.collections

    def allows_model(self, name: str) -> bool:
        return self.models is None or name in self.models

    def allows_profile(self, name: str, profile: ProfileSettings) -> bool:
        """The one rule for profiles, in lists, on their routes and for `model: auto`: the key may
        name the profile and read the collection it is bound to."""
        return self.allows_model(name) and (
            not profile.collection or self.allows_collection(profile.collection)
        )

    def check_collection(self, name: str, param: str | None = "name") -> None:
        if not self.allows_collection(name):
            raise Forbidden(f"this API key may not use collection {name!r}", param=param)

    def check_model(self, name: str) -> None:
        if not self.allows_model(name):
            raise Forbidden(f"this API key may not use model {name!r}", param="model")


UNLIMITED = Scope()
FULL = Scope(sees_server=True)  # admin keys; and with no keys set, every (loopback) caller


def _digest(key: str) -> bytes:
    # Hashing first makes every comparison the same length: no timing hint of a key's length.
    return hashlib.sha256(key.encode()).digest()


class KeyChecker:
    def __init__(self, settings: Settings):
        self._keys: list[tuple[bytes, Role, Scope]] = [
            (_digest(k.get_secret_value()), "admin", FULL) for k in settings.admin_keys
        ]
        self._keys += [(_digest(k.get_secret_value()), "user", UNLIMITED) for k in settings.api_keys]
        for sk in settings.scoped_keys:
            scope = Scope(
                frozenset(sk.collections) if sk.collections is not None else None,
                frozenset(sk.models) if sk.models is not None else None,
            )
            self._keys.append((_digest(sk.key.get_secret_value()), "admin" if sk.admin else "user", scope))

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def role_of(self, key: str) -> tuple[Role, Scope] | None:
        """The first key that matches; every key is compared, with no early exit to time."""
        given = _digest(key)
        found: tuple[Role, Scope] | None = None
        for known, role, scope in self._keys:
            if hmac.compare_digest(given, known) and found is None:
                found = (role, scope)
        return found

    def check(self, request: Request, need: Role) -> None:
        """Raise unless the request's key may do `need` here; its scope goes on `request.state`."""
        request.state.scope = FULL
        if not self.enabled:
            return
        request.state.scope = UNLIMITED
        header = request.headers.get("authorization", "")
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise Unauthorized(
                "this server needs an API key: send `Authorization: Bearer KEY` (the OpenAI client's api_key)"
            )
        found = self.role_of(key.strip())
        if found is None:
            raise Unauthorized("the API key is not valid")
        role, scope = found
        if need == "admin" and role != "admin":
            raise Forbidden(
                f"{request.method} {request.url.path} changes the server's data and needs an admin key "
                "(RAGTUNE_ADMIN_KEYS); this key may chat, search and list"
            )
        in_collection = request.url.path.startswith("/v1/collections/")
        if scope.limited and need == "admin" and not in_collection:
            raise Forbidden(
                f"{request.method} {request.url.path} needs an admin key that is not limited to some "
                "collections or models (RAGTUNE_ADMIN_KEYS)"
            )
        if in_collection and "name" in request.path_params:
            scope.check_collection(request.path_params["name"])
        request.state.scope = scope


def _checker(request: Request) -> KeyChecker:
    checker: KeyChecker = request.app.state.keys
    return checker


def require_user(request: Request, keys: KeyChecker = Depends(_checker)) -> None:  # noqa: B008
    keys.check(request, "user")


def require_admin(request: Request, keys: KeyChecker = Depends(_checker)) -> None:  # noqa: B008
    keys.check(request, "admin")


def require_admin_or_loopback(request: Request, keys: KeyChecker = Depends(_checker)) -> None:  # noqa: B008
    client = request.client.host if request.client else ""
    if not _is_loopback(client):
        if not keys.enabled:
            raise Forbidden("/metrics is served to loopback clients only when no admin key is set")
        keys.check(request, "admin")


def request_scope(request: Request, _: None = Depends(require_user)) -> Scope:  # noqa: B008
    """The request key's scope; depending on `require_user` makes sure the key was checked."""
    scope: Scope = request.state.scope
    return scope


ScopeDep = Annotated[Scope, Depends(request_scope)]
UserKey = Depends(require_user)
AdminKey = Depends(require_admin)
AdminOrLoopback = Depends(require_admin_or_loopback)


def _is_loopback(host: str) -> bool:
    if host in ("localhost", "testclient"):  # Starlette's TestClient calls itself "testclient"
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(settings: Settings) -> None:
    """Refuse to serve a non-loopback address with no keys: anyone reaching the port could
    drop collections and load adapters."""
    host = settings.serving.host
    if _is_loopback(host) and host != "testclient" or KeyChecker(settings).enabled:
        return
    raise SettingsError(
        f"refusing to listen on {host} with no API keys: anyone who can reach the port could change "
        "documents, collections and adapters. Set RAGTUNE_ADMIN_KEYS (and RAGTUNE_API_KEYS for "
        "chat-only clients), comma-separated, or bind to 127.0.0.1 (RAGTUNE_SERVING__HOST / --host)"
    )
