"""Errors a user can act on. A leaf module every layer may import; the server maps them to HTTP.

Anything that is not a ``RagServeError`` is a bug and reaches the client only as a generic 500.
"""

from __future__ import annotations


class RagServeError(Exception):
    """Base of user-facing errors: the message is one line a user can act on."""

    status_code = 400
    error_type = "invalid_request_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


class InputError(RagServeError):
    """The request, file or option given is malformed."""


class NotFoundError(RagServeError):
    """A named thing (index, model, file) does not exist."""

    status_code = 404
    error_type = "not_found_error"


class ContextLengthError(InputError):
    """A prompt does not fit the model's context window."""

    def __init__(self, prompt_tokens: int, context: int, *, param: str | None = "messages"):
        super().__init__(
            f"prompt is {prompt_tokens} tokens but the model's context window is {context} tokens",
            param=param,
            code="context_length_exceeded",
        )
        self.prompt_tokens = prompt_tokens
        self.context = context


class PayloadTooLargeError(RagServeError):
    """A request body over the server's size limit."""

    status_code = 413


class IndexMismatchError(RagServeError):
    """An index was built with another encoder or tokenizer than the one loaded."""

    status_code = 409
    error_type = "index_mismatch_error"


class UpstreamError(RagServeError):
    """A backend this server depends on is down, slow or answered badly."""

    status_code = 502
    error_type = "upstream_error"


class OverloadedError(RagServeError):
    """Too many requests in flight; the client should retry later."""

    status_code = 503
    error_type = "overloaded_error"


class DrainingError(OverloadedError):
    """The server is shutting down: in-flight requests finish, new ones go elsewhere."""


class AuthenticationError(RagServeError):
    """No API key, or one this server does not know."""

    status_code = 401
    error_type = "invalid_request_error"


class PermissionDeniedError(RagServeError):
    """A valid key asking for what it may not do (an admin route without the admin key)."""

    status_code = 403
    error_type = "permission_error"


class RateLimitError(RagServeError):
    """A key (or client) over its request rate; ``retry_after`` says when the next may come."""

    status_code = 429
    error_type = "rate_limit_error"

    def __init__(self, message: str, retry_after: float):
        super().__init__(message, code="rate_limit_exceeded")
        self.retry_after = retry_after


class DeadlineError(RagServeError):
    """A request ran past the server's deadline and was stopped."""

    status_code = 504
    error_type = "timeout_error"
