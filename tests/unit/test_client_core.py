"""The SDK's sans-I/O core: calls, retry timing, error mapping, SSE decoding."""

from __future__ import annotations

import json
import random

import pytest

from ragserve.client import core
from ragserve.client.errors import (
    AuthenticationError,
    InternalServerError,
    RagServeClientError,
    RateLimitError,
    StreamError,
)


def test_calls_carry_rag_and_ask_for_usage_when_streaming() -> None:
    call = core.chat_call("hi", "ragserve-auto", True, {"k": 2}, {"max_tokens": 5, "seed": None})
    assert call.path == "/v1/chat/completions" and call.stream and call.kind == "chat"
    assert call.body == {
        "messages": [{"role": "user", "content": "hi"}], "model": "ragserve-auto",
        "stream": True, "max_tokens": 5, "rag": {"k": 2},
        "stream_options": {"include_usage": True},
    }  # fmt: skip
    text = core.completion_call("def f():", None, False, None, {})
    assert text.body == {"prompt": "def f():", "model": None, "stream": False}
    assert core.retrieve_call(["a", "b"], 3, "bm25", None).body == {
        "k": 3,
        "queries": ["a", "b"],
        "retriever": "bm25",
    }


def test_retry_honours_retry_after_else_backs_off_with_jitter() -> None:
    policy = core.RetryPolicy(max_retries=3, backoff=0.5, cap=4, rng=random.Random(0))
    assert policy.delay(0, 2.0) == 2.0 and policy.delay(0, 99) == 4
    waits = [policy.delay(i, None) for i in range(3)]
    assert all(0.25 * 2**i <= w <= 0.5 * 2**i for i, w in enumerate(waits))
    assert policy.delay(3, 1.0) is None


def test_errors_are_typed_by_status_with_the_servers_fields() -> None:
    error = {"message": "slow down", "type": "rate_limit_error", "code": "rate_limit_exceeded"}
    body = json.dumps({"error": error}).encode()
    e = core.error_for(429, body, {"retry-after": "7"})
    assert isinstance(e, RateLimitError) and e.retry_after == 7.0
    assert (e.message, e.code) == ("slow down", "rate_limit_exceeded")
    assert isinstance(core.error_for(401, b"{}", {}), AuthenticationError)
    odd = core.error_for(502, b"<html>bad gateway</html>", {})
    assert isinstance(odd, InternalServerError) and odd.message == "HTTP 502"


def test_sse_lines_become_typed_events() -> None:
    decoder = core.SSEDecoder("chat")
    base = {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "m"}
    cite = {"index": 1, "id": "a#0", "doc_id": "a", "title": "A", "text": "t", "score": 1.0}
    lines = [
        {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
        {**base, "choices": [{"index": 0, "delta": {}}], "citations": [cite]},
        {**base, "choices": [{"index": 0, "delta": {"content": "Hel"}}]},
        {**base, "choices": [{"index": 0, "delta": {"content": "lo"}, "finish_reason": "stop"}]},
        {
            **base,
            "choices": [],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
        },
    ]
    events = [e for line in lines for e in decoder.feed(f"data: {json.dumps(line)}")]
    assert decoder.feed("") == [] and not decoder.done
    decoder.feed("data: [DONE]")
    assert decoder.done
    kinds = [type(e).__name__ for e in events]
    assert kinds == ["Citations", "TextDelta", "TextDelta", "Finish", "Usage"]
    assert "".join(e.text for e in events if isinstance(e, core.TextDelta)) == "Hello"


def test_an_error_event_mid_stream_raises_and_garbage_is_named() -> None:
    decoder = core.SSEDecoder("text")
    error = {"error": {"message": "deadline", "type": "timeout_error",
                       "code": "deadline_exceeded"}}  # fmt: skip
    with pytest.raises(StreamError) as e:
        decoder.feed(f"data: {json.dumps(error)}")
    assert e.value.code == "deadline_exceeded"
    with pytest.raises(RagServeClientError, match="not JSON"):
        decoder.feed("data: {oops")
