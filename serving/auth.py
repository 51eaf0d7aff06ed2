"""API keys: who may call what, checked by one FastAPI dependency per route.

`RAGTUNE_API_KEYS` may chat, search and list; `RAGTUNE_ADMIN_KEYS` may also change documents,
collections, adapters and profiles. Keys come as `Authorization: Bearer KEY`, are compared in
constant time and are never logged. With no keys set the server is open, and only a loopback
address may be bound (`check_exposure`). `/health` and the playground stay open; `/metrics`
takes an admin key or a loopback client.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from typing import Literal

from fastapi import Depends, Request

from serving.errors import Forbidden, Unauthorized
from serving.settings import Settings, SettingsError

Role = Literal["user", "admin"]


def _digest(key: str) -> bytes:
    # Hashing first makes every comparison the same length: no timing hint of a key's length.
    return hashlib.sha256(key.encode()).digest()


class KeyChecker:
    def __init__(self, settings: Settings):
        self._admin = [_digest(k.get_secret_value()) for k in settings.admin_keys]
        self._user = [_digest(k.get_secret_value()) for k in settings.api_keys]

    @property
    def enabled(self) -> bool:
        return bool(self._admin or self._user)

    def role_of(self, key: str) -> Role | None:
        given = _digest(key)
        admin = user = False
        for known in self._admin:  # every key is compared: no early exit to time
            admin |= hmac.compare_digest(given, known)
        for known in self._user:
            user |= hmac.compare_digest(given, known)
        return "admin" if admin else "user" if user else None

    def check(self, request: Request, need: Role) -> None:
        if not self.enabled:
            return
        header = request.headers.get("authorization", "")
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise Unauthorized(
                "this server needs an API key: send `Authorization: Bearer KEY` (the OpenAI client's api_key)"
            )
        role = self.role_of(key.strip())
        if role is None:
            raise Unauthorized("the API key is not valid")
        if need == "admin" and role != "admin":
            raise Forbidden(
                f"{request.method} {request.url.path} changes the server's data and needs an admin key "
                "(RAGTUNE_ADMIN_KEYS); this key may chat, search and list"
            )


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
    if _is_loopback(host) and host != "testclient" or settings.api_keys or settings.admin_keys:
        return
    raise SettingsError(
        f"refusing to listen on {host} with no API keys: anyone who can reach the port could change "
        "documents, collections and adapters. Set RAGTUNE_ADMIN_KEYS (and RAGTUNE_API_KEYS for "
        "chat-only clients), comma-separated, or bind to 127.0.0.1 (RAGTUNE_SERVING__HOST / --host)"
    )
