"""Per-caller sliding windows: a caller over its rate is refused at once, with when to retry."""

from __future__ import annotations

import asyncio

import pytest

from ragserve.errors import RateLimitError
from ragserve.server.auth import RateLimits


def test_a_caller_over_its_rate_is_refused_with_retry_after() -> None:
    async def run() -> None:
        limits = RateLimits(2, period=0.3)
        await limits.admit("a")
        await limits.admit("a")
        with pytest.raises(RateLimitError) as e:
            await limits.admit("a")
        assert 0 < e.value.retry_after <= 0.3
        await limits.admit("b")  # another caller has its own window
        await asyncio.sleep(e.value.retry_after + 0.02)
        await limits.admit("a")  # the window slid

    asyncio.run(run())


def test_no_rate_means_no_limit() -> None:
    async def run() -> None:
        limits = RateLimits(None, 60)
        for _ in range(100):
            await limits.admit("a")
        assert limits.windows == {}

    asyncio.run(run())
