"""The client's sans-I/O core, shared by ``RagClient`` and ``AsyncRagClient``: requests as
``Call`` values, the retry policy, error mapping, and SSE lines decoded into typed events. The
two clients only move bytes (httpx's sync and async clients), so they cannot drift apart."""

from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any

from pydantic import BaseModel, ValidationError

from ragserve.client.errors import RagServeClientError, StreamError, status_error
from ragserve.server.protocol import (
    ChatCompletion,
    ChatCompletionChunk,
    CitationOut,
    Completion,
    CompletionChunk,
    TraceStep,
    UsageOut,
)

RETRY_STATUSES = frozenset({429, 503})


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    body: dict[str, Any] | None = None
    stream: bool = False
    kind: str = ""  # "chat" or "text": how a stream's chunks read


# -- typed stream events --


@dataclass(frozen=True)
class TextDelta:
    text: str


@dataclass(frozen=True)
class Citations:
    citations: list[CitationOut]


@dataclass(frozen=True)
class RagStep:
    step: TraceStep


@dataclass(frozen=True)
class Usage:
    usage: UsageOut


@dataclass(frozen=True)
class Finish:
    reason: str


StreamEvent = TextDelta | Citations | RagStep | Usage | Finish


def _messages(messages: Sequence[Mapping[str, str]] | str) -> list[dict[str, str]]:
    if isinstance(messages, str):
        return [{"role": "user", "content": messages}]
    return [dict(m) for m in messages]


def _body(
    base: dict[str, Any], rag: Mapping[str, Any] | None, extra: Mapping[str, Any]
) -> dict[str, Any]:
    body = {**base, **{k: v for k, v in extra.items() if v is not None}}
    if rag:
        body["rag"] = dict(rag)
    if body.get("stream"):
        body.setdefault("stream_options", {"include_usage": True})
    return body


def chat_call(
    messages: Sequence[Mapping[str, str]] | str,
    model: str | None,
    stream: bool,
    rag: Mapping[str, Any] | None,
    extra: Mapping[str, Any],
) -> Call:
    base = {"messages": _messages(messages), "model": model, "stream": stream}
    return Call("POST", "/v1/chat/completions", _body(base, rag, extra), stream, "chat")


def completion_call(
    prompt: str,
    model: str | None,
    stream: bool,
    rag: Mapping[str, Any] | None,
    extra: Mapping[str, Any],
) -> Call:
    base = {"prompt": prompt, "model": model, "stream": stream}
    return Call("POST", "/v1/completions", _body(base, rag, extra), stream, "text")


def retrieve_call(
    query: str | Sequence[str], k: int, retriever: str | None, index: str | None
) -> Call:
    body: dict[str, Any] = {"k": k}
    body.update({"query": query} if isinstance(query, str) else {"queries": list(query)})
    body.update({k: v for k, v in (("retriever", retriever), ("index", index)) if v is not None})
    return Call("POST", "/v1/retrieve", body)


@dataclass
class RetryPolicy:
    """Retries on 429 and 503 (and on connection errors before any byte came back), waiting
    what ``Retry-After`` says, else exponential backoff with jitter, capped."""

    max_retries: int = 2
    backoff: float = 0.5
    cap: float = 8.0
    rng: random.Random = field(default_factory=random.Random)

    def delay(self, attempt: int, retry_after: float | None) -> float | None:
        """Seconds to wait before retry number ``attempt + 1``; ``None``: give up."""
        if attempt >= self.max_retries:
            return None
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.cap)
        return min(self.backoff * 2**attempt, self.cap) * (0.5 + self.rng.random() / 2)


def retry_after(headers: Mapping[str, str]) -> float | None:
    """``Retry-After`` as seconds: a number, or an HTTP date."""
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        from datetime import datetime, timezone

        return (parsedate_to_datetime(value) - datetime.now(timezone.utc)).total_seconds()
    except (TypeError, ValueError):
        return None


def error_for(status: int, content: bytes, headers: Mapping[str, str]) -> RagServeClientError:
    try:
        body = json.loads(content)
    except (ValueError, UnicodeDecodeError):
        body = None
    return status_error(status, body, retry_after(headers))


def parse(model: type[BaseModel], content: bytes) -> Any:
    """A response body as the server's wire model; not one: a clear error, not a traceback."""
    try:
        return model.model_validate_json(content)
    except ValidationError as e:
        raise RagServeClientError(
            f"the server's answer is not a {model.__name__}: {e.errors()[0]['msg']}"
        ) from None


class SSEDecoder:
    """Lines of an SSE stream in, typed events out; ``done`` once ``[DONE]`` arrived."""

    def __init__(self, kind: str):
        self.chunk = ChatCompletionChunk if kind == "chat" else CompletionChunk
        self.kind = kind
        self.done = False

    def feed(self, line: str) -> list[StreamEvent]:
        if not line.startswith("data:"):
            return []
        data = line[5:].strip()
        if data == "[DONE]":
            self.done = True
            return []
        try:
            raw = json.loads(data)
        except ValueError:
            raise RagServeClientError(
                f"the server sent a stream line that is not JSON: {data[:80]!r}"
            ) from None
        if isinstance(raw, dict) and "error" in raw:
            raise StreamError(200, raw)
        chunk = self.chunk.model_validate(raw)
        out: list[StreamEvent] = []
        if chunk.rag_step is not None:
            out.append(RagStep(chunk.rag_step))
        if chunk.citations:
            out.append(Citations(chunk.citations))
        for choice in chunk.choices:
            text = choice.delta.content if self.kind == "chat" else choice.text  # type: ignore[union-attr]
            if text:
                out.append(TextDelta(text))
            if choice.finish_reason:
                out.append(Finish(choice.finish_reason))
        if chunk.usage is not None:
            out.append(Usage(chunk.usage))
        return out


RESPONSES: dict[str, type[BaseModel]] = {"chat": ChatCompletion, "text": Completion}
