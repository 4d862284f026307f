"""A stream's request gives back its admission and index lease even when the client leaves
before the first body byte, when the body generator never starts and runs no ``finally``."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from ragserve.server.runner import ReleasingStream


def run_stream(send_fails: bool) -> tuple[list[str], int]:
    events: list[str] = []
    released = 0

    async def body() -> AsyncIterator[str]:
        events.append("started")
        try:
            yield "data: one\n\n"
            yield "data: [DONE]\n\n"
        finally:
            events.append("body finally")

    async def release() -> None:
        nonlocal released
        released += 1

    async def send(message: dict) -> None:
        if send_fails:
            raise OSError("client went away")

    async def receive() -> dict:
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.4"}, "method": "POST"}
    response = ReleasingStream(body(), release, media_type="text/event-stream")
    with contextlib.suppress(Exception):
        asyncio.run(response(scope, receive, send))
    return events, released


def test_a_body_that_never_started_is_still_released() -> None:
    events, released = run_stream(send_fails=True)
    assert "started" not in events  # the headers could not be sent: the body never ran
    assert released == 1


def test_a_finished_stream_is_released_once_by_the_response() -> None:
    events, released = run_stream(send_fails=False)
    assert events == ["started", "body finally"]
    assert released == 1
