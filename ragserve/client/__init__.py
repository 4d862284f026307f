"""The Python SDK: ``RagClient`` and ``AsyncRagClient`` over one sans-I/O core (``core``), with
the server's own wire models (``ragserve.server.protocol``) as types."""

from ragserve.client.aio import AsyncRagClient
from ragserve.client.core import Citations, Finish, RagStep, StreamEvent, TextDelta, Usage
from ragserve.client.errors import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    GatewayTimeoutError,
    InternalServerError,
    NotFoundError,
    PermissionDeniedError,
    RagServeClientError,
    RateLimitError,
    ServiceUnavailableError,
    StreamError,
)
from ragserve.client.sync import RagClient

__all__ = [
    "APIConnectionError", "APIStatusError", "APITimeoutError", "AsyncRagClient",
    "AuthenticationError", "BadRequestError", "Citations", "Finish", "GatewayTimeoutError",
    "InternalServerError", "NotFoundError", "PermissionDeniedError", "RagClient",
    "RagServeClientError", "RagStep", "RateLimitError", "ServiceUnavailableError",
    "StreamError", "StreamEvent", "TextDelta", "Usage",
]  # fmt: skip
