"""Errors the client raises: the server's OpenAI-shaped error body, typed by status."""

from __future__ import annotations

from typing import Any


class RagServeClientError(Exception):
    """Base of everything the client raises."""


class APIConnectionError(RagServeClientError):
    """The server could not be reached (refused, reset, DNS)."""


class APITimeoutError(APIConnectionError):
    """No answer within the client's timeout."""


class APIStatusError(RagServeClientError):
    """The server answered with an error status; ``message``, ``type``, ``param`` and ``code``
    are its error body's fields."""

    status_code = 0

    def __init__(self, status: int, body: dict[str, Any] | None, retry_after: float | None = None):
        error = (body or {}).get("error") if isinstance(body, dict) else None
        error = error if isinstance(error, dict) else {}
        self.status = status
        self.message = str(error.get("message") or f"HTTP {status}")
        self.type = error.get("type")
        self.param = error.get("param")
        self.code = error.get("code")
        self.retry_after = retry_after
        super().__init__(f"{status}: {self.message}")


class BadRequestError(APIStatusError):
    status_code = 400


class AuthenticationError(APIStatusError):
    status_code = 401


class PermissionDeniedError(APIStatusError):
    status_code = 403


class NotFoundError(APIStatusError):
    status_code = 404


class PayloadTooLargeError(APIStatusError):
    status_code = 413


class RateLimitError(APIStatusError):
    status_code = 429


class InternalServerError(APIStatusError):
    status_code = 500


class ServiceUnavailableError(APIStatusError):
    status_code = 503


class GatewayTimeoutError(APIStatusError):
    status_code = 504


class StreamError(APIStatusError):
    """An error event inside a stream that had started (say, the server's deadline passed)."""


BY_STATUS: dict[int, type[APIStatusError]] = {
    c.status_code: c
    for c in (
        BadRequestError, AuthenticationError, PermissionDeniedError, NotFoundError,
        PayloadTooLargeError, RateLimitError, InternalServerError, ServiceUnavailableError,
        GatewayTimeoutError,
    )
}  # fmt: skip


def status_error(status: int, body: Any, retry_after: float | None = None) -> APIStatusError:
    cls = BY_STATUS.get(status) or (InternalServerError if status >= 500 else BadRequestError)
    return cls(status, body if isinstance(body, dict) else None, retry_after)
