"""Retry control flow of the upstream client: 429/503 honour Retry-After, then give up cleanly.

httpx's MockTransport stands in for the network here; the real upstream is covered in
tests/integration/test_openai_upstream.py.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from ragserve.errors import UpstreamError
from ragserve.generation.base import SamplingParams
from ragserve.generation.openai_upstream import OpenAIUpstreamGenerator

STREAM = (
    'data: {"choices":[{"text":"Hi","index":0,"finish_reason":null}]}\n\n'
    'data: {"choices":[{"text":"!","index":0,"finish_reason":"stop"}],'
    '"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}\n\n'
    "data: [DONE]\n\n"
)


def make(responses: list[httpx.Response], seen: list[float]) -> OpenAIUpstreamGenerator:
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(time.monotonic())
        return responses.pop(0)

    gen = OpenAIUpstreamGenerator(
        "http://upstream.test/v1",
        model="m",
        context_length=100,
        transport=httpx.MockTransport(handler),
        max_retries=2,
    )
    return gen


async def collect(gen: OpenAIUpstreamGenerator) -> tuple[str, object]:
    chunks = [c async for c in gen.generate("x", SamplingParams(max_tokens=4))]
    return "".join(c.text for c in chunks), chunks[-1]


def test_retry_after_is_honoured_then_the_stream_is_parsed() -> None:
    seen: list[float] = []
    gen = make(
        [
            httpx.Response(503, headers={"Retry-After": "0.3"}, text="busy"),
            httpx.Response(200, text=STREAM),
        ],
        seen,
    )
    text, last = asyncio.run(collect(gen))
    assert text == "Hi!" and last.finish_reason == "stop" and last.usage.completion_tokens == 2
    assert seen[1] - seen[0] >= 0.3


def test_gives_up_after_max_retries_with_the_upstream_message() -> None:
    seen: list[float] = []
    busy = [
        httpx.Response(429, headers={"Retry-After": "0"}, json={"error": {"message": "slow"}})
        for _ in range(3)
    ]
    gen = make(busy, seen)
    with pytest.raises(UpstreamError, match="429: slow"):
        asyncio.run(collect(gen))
    assert len(seen) == 3
