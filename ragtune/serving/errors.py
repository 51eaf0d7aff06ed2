"""Typed errors of the serving layer (the shared ones live in core/errors.py)."""

from __future__ import annotations

from ragtune.core.errors import RagtuneError


class RequestTooLarge(RagtuneError):
    status_code = 413
    code = "request_too_large"


class EngineRejected(RagtuneError):
    """The engine refused the request's parameters (a check ragtune does not make itself)."""

    code = "invalid_sampling_parameters"


class EngineUnhealthy(RagtuneError):
    status_code = 503
    error_type = "server_error"
    code = "engine_unhealthy"


class AdapterRejected(RagtuneError):
    """The adapter passed the checks on disk but changed the engine's output on the base model."""

    status_code = 422
    code = "adapter_rejected"


class Unauthorized(RagtuneError):
    status_code = 401
    error_type = "authentication_error"
    code = "invalid_api_key"


class Forbidden(RagtuneError):
    status_code = 403
    error_type = "permission_error"
    code = "insufficient_permissions"
