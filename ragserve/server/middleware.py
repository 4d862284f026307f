"""ASGI middleware that guards every route: request body size, and errors no route expected.

Both are plain ASGI (no ``BaseHTTPMiddleware``), so streaming responses pass through untouched.
"""

from __future__ import annotations

import logging
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ragserve.errors import PayloadTooLargeError
from ragserve.server.errors import error_response, from_exception

log = logging.getLogger("ragserve.server")


class BodyLimit:
    """Refuse a body over ``limit`` bytes with 413: at once when ``Content-Length`` says so,
    else as soon as the bytes received pass the limit, so a huge body is never held whole."""

    def __init__(self, app: ASGIApp, limit: int):
        self.app = app
        self.limit = limit

    def _too_large(self) -> PayloadTooLargeError:
        return PayloadTooLargeError(
            f"request body is larger than this server's limit of {self.limit} bytes"
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.limit:
            await from_exception(self._too_large(), close=True)(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise self._too_large()
            return message

        await self.app(scope, counted, send)


def _content_length(scope: Scope) -> int | None:
    for key, value in scope.get("headers", ()):
        if key == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class UnexpectedErrors:
    """A bug becomes a logged traceback and a generic 500 *response*.

    Starlette's own last-resort handler re-raises after answering, and the server then drops the
    connection without ``Connection: close``, failing the client's next request on it.
    """

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: dict[str, Any]) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception:
            log.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            if started:  # a response is half sent: only closing the connection can end it
                raise
            await error_response(500, "internal server error", "server_error")(scope, receive, send)
