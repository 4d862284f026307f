"""Every error the server sends, built in one place, in OpenAI's error shape.

A ``RagServeError`` carries its own status and one-line message; anything else is logged with
its traceback and reaches the client only as a generic 500.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from ragserve.errors import (
    AuthenticationError,
    OverloadedError,
    PayloadTooLargeError,
    RagServeError,
    RateLimitError,
)
from ragserve.server.protocol import ErrorResponse

log = logging.getLogger("ragserve.server")


def error_response(
    status: int,
    message: str,
    type_: str,
    param: str | None = None,
    code: str | None = None,
    *,
    headers: Mapping[str, str] | None = None,
    close: bool = False,
) -> JSONResponse:
    """``close``: the request body was not read to its end, so the connection cannot be reused."""
    extra = dict(headers or {})
    if status == 503:
        extra.setdefault("Retry-After", "1")
    if close:
        extra["Connection"] = "close"
    return JSONResponse(ErrorResponse.of(message, type_, param, code), status, headers=extra)


def from_exception(exc: RagServeError, *, close: bool = False) -> JSONResponse:
    close = close or isinstance(exc, PayloadTooLargeError)
    headers = {}
    if isinstance(exc, RateLimitError):
        headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
    elif isinstance(exc, AuthenticationError):
        headers["WWW-Authenticate"] = "Bearer"
    return error_response(
        exc.status_code,
        exc.message,
        exc.error_type,
        exc.param,
        exc.code,
        headers=headers,
        close=close,
    )


def _where(loc: Sequence[int | str]) -> str:
    """A pydantic location in the user's terms: ``messages[0].content``, union tags left out."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part != "body" and part.isidentifier() and part not in _TYPE_TAGS:
            out += f".{part}" if out else part
    return out


# Names pydantic gives the members of a union in an error's location.
_TYPE_TAGS = frozenset({"str", "int", "float", "bool", "list", "dict", "none", "function"})


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    errors = exc.errors()
    if not errors:
        return "invalid request", None
    if any(e.get("type") == "json_invalid" for e in errors):
        return "request body is not valid JSON", None
    # Of a union's failures, the one that got furthest into the value says the most.
    first = max(errors, key=lambda e: len(e.get("loc", ())))
    param = _where(first.get("loc", ())) or None
    msg = first.get("msg", "invalid value").removeprefix("Value error, ")
    if first.get("type") == "missing" and param:
        return f"missing required field '{param}'", param
    if first.get("type") == "extra_forbidden" and param:
        return f"{param}: unknown field", param
    return (f"{param}: {msg}" if param else msg), param


def install(app: FastAPI) -> None:
    @app.exception_handler(RagServeError)
    async def _ragserve(_: Request, exc: RagServeError) -> JSONResponse:
        if isinstance(exc, OverloadedError):
            log.warning("overloaded: %s", exc.message)
        return from_exception(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(exc)
        return error_response(400, message, "invalid_request_error", param)

    @app.exception_handler(HTTPException)
    async def _http(_: Request, exc: HTTPException) -> JSONResponse:
        type_ = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        # Keep the exception's headers: a 405 must say which methods are allowed (``Allow``).
        return error_response(exc.status_code, str(exc.detail), type_, headers=exc.headers)
