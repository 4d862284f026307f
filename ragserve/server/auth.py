"""API keys and per-key request rates, as FastAPI dependencies.

Keys are bearer tokens (``Authorization: Bearer KEY``, what the ``openai`` client sends); none
configured means the API is open. Rates are counted per key (per client address when open) with
``asyncio-throttle``'s sliding window, but a request over its rate is refused at once with 429 and
``Retry-After`` instead of being held: a held request would still count toward admission.
"""

from __future__ import annotations

import hmac
import time

from asyncio_throttle import Throttler
from fastapi import Depends, Request

from ragserve.errors import AuthenticationError, PermissionDeniedError, RateLimitError
from ragserve.server.state import ServerState, get_state

MAX_TRACKED = 10_000  # callers remembered for rate limiting; idle ones are forgotten first


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _known(key: str | None, keys: tuple[str, ...]) -> bool:
    # Compared in constant time, each against every key: timing tells nothing about a key.
    return key is not None and any(hmac.compare_digest(key, k) for k in keys)


class RateLimits:
    """One sliding window per caller."""

    def __init__(self, rate: int | None, period: float):
        self.rate, self.period = rate, period
        self.windows: dict[str, Throttler] = {}

    async def admit(self, caller: str) -> None:
        if self.rate is None:
            return
        window = self.windows.pop(caller, None) or Throttler(self.rate, self.period)
        self.windows[caller] = window  # most recently seen last
        if len(self.windows) > MAX_TRACKED:
            del self.windows[next(iter(self.windows))]
        window.flush()
        stamps = window._task_logs  # the window's requests; the package has no public count
        if len(stamps) >= self.rate:
            wait = self.period - (time.monotonic() - stamps[0])
            raise RateLimitError(
                f"rate limit reached: {self.rate} requests per {self.period:g} s;"
                f" retry in {max(wait, 0):.1f} s",
                retry_after=wait,
            )
        await window.acquire()  # room in the window: records the request, returns at once


async def api_key(request: Request, state: ServerState = Depends(get_state)) -> str:
    """The caller: its key where keys are configured (401 without a known one), else its
    address. Rate-limited per caller."""
    keys = state.settings.api_keys
    key = _bearer(request)
    if keys and not _known(key, keys):
        raise AuthenticationError(
            "missing API key: send 'Authorization: Bearer <key>'"
            if key is None
            else "incorrect API key provided",
            code="invalid_api_key",
        )
    caller = f"key:{key}" if keys else f"addr:{request.client.host if request.client else '-'}"
    await state.rate_limits.admit(caller)
    return caller


async def admin_key(request: Request, state: ServerState = Depends(get_state)) -> None:
    """Admin routes need the admin key; without one configured they are closed (403)."""
    configured = state.settings.admin_key
    if configured is None:
        raise PermissionDeniedError(
            "admin routes are off: set admin_key (RAGSERVE_ADMIN_KEY) to use them"
        )
    if not _known(_bearer(request), (configured,)):
        raise AuthenticationError("admin key required", code="invalid_api_key")


async def known_key(request: Request, state: ServerState = Depends(get_state)) -> None:
    """Read-only routes (models, indexes): a known key where keys are configured, no rate."""
    keys = state.settings.api_keys
    if keys and not _known(_bearer(request), keys):
        raise AuthenticationError("incorrect or missing API key", code="invalid_api_key")
