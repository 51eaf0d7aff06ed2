"""Typed errors for the whole project.

Each error carries the HTTP status and OpenAI error type the server renders it with, so no
layer ever chooses a status by matching message text.
"""

from __future__ import annotations


class RagtuneError(Exception):
    status_code: int = 400
    error_type: str = "invalid_request_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code


class NotFoundError(RagtuneError):
    status_code = 404
    error_type = "not_found_error"


class ConflictError(RagtuneError):
    status_code = 409
    error_type = "conflict_error"


class CollectionNotFound(NotFoundError):
    code = "collection_not_found"


class CollectionExists(ConflictError):
    code = "collection_exists"


class DocumentNotFound(NotFoundError):
    code = "document_not_found"


class InvalidDocument(RagtuneError):
    code = "invalid_document"


class DocumentTooLarge(InvalidDocument):
    """Over `retrieval.max_document_chars`: the one cap on every write (HTTP JSON, upload, ingest)."""

    status_code = 413
    code = "document_too_large"


class InvalidFilter(RagtuneError):
    code = "invalid_filter"


class DimensionMismatch(ConflictError):
    code = "dimension_mismatch"


class EmbedderMismatch(ConflictError):
    """The collection's vectors came from other weights than the embedder loaded now."""

    code = "embedder_mismatch"


class WriterBusy(RagtuneError):
    """Another process holds the collection's write lock past the timeout."""

    status_code = 503
    error_type = "server_error"
    code = "collection_busy"


class StoreUnavailable(RagtuneError):
    """The document store (a PostgreSQL server) cannot be reached."""

    status_code = 503
    error_type = "server_error"
    code = "store_unavailable"


class ModelError(RagtuneError):
    """A model folder is missing, partial or cannot be built; the message says what to do."""
