"""Admission control: refuse with 503 + Retry-After instead of queueing without bound."""

from __future__ import annotations

from ragserve.errors import OverloadedError


class InFlightLimiter:
    """Counts requests admitted and not yet finished (streams count until their last byte)."""

    def __init__(self, limit: int):
        self.limit = limit
        self.in_flight = 0

    def acquire(self) -> None:
        if self.in_flight >= self.limit:
            raise OverloadedError(
                f"server busy: {self.in_flight} requests in flight (limit {self.limit}); retry"
            )
        self.in_flight += 1

    def release(self) -> None:
        self.in_flight -= 1
