"""Running one admitted request, whatever route it came by: admission, the index lease, the
deadline, cancellation when the client goes, metrics, and the answer as one JSON body or as SSE.

Routes differ only in how they parse a body into a ``RagRequest`` and in their wire shapes
(``Wire``): chat deltas or completion text.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from fastapi import Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel

from ragserve.engine import Event, Finished, RagRequest, Retrieved, Step, TokenText
from ragserve.engine.events import Citation
from ragserve.errors import DeadlineError, RagServeError
from ragserve.server.metrics import TokenClock
from ragserve.server.protocol import CitationOut, ErrorResponse, TraceStep, UsageOut
from ragserve.server.state import ServerState

log = logging.getLogger("ragserve.server")
T = TypeVar("T")


class Wire(Protocol):
    """A route's response shapes."""

    id_prefix: str

    def full(
        self, model: str, text: str, finished: Finished, citations: list[CitationOut],
        trace: list[TraceStep] | None,
    ) -> BaseModel: ...  # fmt: skip

    def chunk(self, base: dict[str, Any], **parts: Any) -> BaseModel | None:
        """``parts``: ``text``, ``first``, ``finish_reason``, ``usage``, ``citations``,
        ``rag_step``, ``no_choices`` (the usage chunk). ``None``: nothing to send."""
        ...


@dataclass(frozen=True)
class Reply:
    """How to answer: which route (metrics), the model id to echo, SSE or not."""

    route: str
    model: str
    stream: bool
    include_usage: bool
    trace: bool
    index: str | None


def trace_step(step: Step) -> TraceStep:
    return TraceStep(
        iteration=step.iteration,
        kind=step.kind,  # type: ignore[arg-type]
        text=step.text,
        query=step.query,
        passages=list(step.passages),
        seconds=round(step.seconds, 4),
    )


def citations_out(cs: list[Citation]) -> list[CitationOut]:
    return [
        CitationOut(
            index=c.index, id=c.external_id, doc_id=c.doc_id, title=c.title, text=c.text,
            score=c.score,
        )
        for c in cs
    ]  # fmt: skip


def usage_out(f: Finished) -> UsageOut:
    u = f.usage
    return UsageOut(
        prompt_tokens=u.prompt_tokens,
        completion_tokens=u.completion_tokens,
        total_tokens=u.total_tokens,
    )


class ClientGone(Exception):
    """The client closed the connection before its answer was ready."""


async def _disconnected(request: Request) -> None:
    """Returns once the client has gone (the body is read, so only a disconnect can arrive)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def cancel_on_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Run ``work`` until it finishes or the client goes away, whichever comes first: a dropped
    request must not keep the model busy."""
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in (task, watch):
            if not t.done():
                t.cancel()
        await asyncio.gather(task, watch, return_exceptions=True)
    if task.cancelled():
        raise ClientGone
    return task.result()


class Deadline:
    """The moment a request must be done by (``request_timeout`` after it arrived)."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.at = time.monotonic() + seconds

    def error(self) -> DeadlineError:
        return DeadlineError(
            f"request ran past this server's {self.seconds:g} s deadline and was stopped",
            code="deadline_exceeded",
        )

    async def within(self, work: Awaitable[T]) -> T:
        # ``asyncio.timeout``, not ``wait_for``: this wraps every token of a stream, and
        # ``wait_for`` makes a task per call; the timeout cancels the awaiting task itself.
        try:
            async with asyncio.timeout(max(self.at - time.monotonic(), 0)):
                return await work
        except TimeoutError:
            raise self.error() from None


async def run(
    request: Request, state: ServerState, rag_request: RagRequest, reply: Reply, wire: Wire
) -> BaseModel | Response:
    """Admit the request, run its strategy on its index's engine, and answer."""
    strategy = rag_request.rag.strategy
    request.state.strategy = strategy
    state.indexes.get(reply.index)  # an unknown index is a 404 before admission
    state.admit()
    served = state.indexes.acquire(reply.index)
    deadline = Deadline(state.settings.request_timeout)
    events = served.engine.run(rag_request).__aiter__()
    clock = TokenClock(state.metrics, reply.route, strategy)

    released = False

    async def done() -> None:
        nonlocal released
        if released:  # a stream's body and its response both make sure
            return
        released = True
        try:
            await events.aclose()
        finally:
            state.release()
            state.indexes.release(served)

    handed_over = False  # to the stream, which releases its admission and lease when it ends
    try:
        if reply.stream:
            head = await cancel_on_disconnect(request, deadline.within(_head(events)))
            body = _sse(head, events, reply, wire, state, clock, deadline, done)
            response = ReleasingStream(
                body,
                done,
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
            handed_over = True
            return response
        work = deadline.within(_collect(events, reply, wire, state, clock))
        return await cancel_on_disconnect(request, work)
    except ClientGone:
        log.info("client went away; request cancelled")
        return Response(status_code=499)
    finally:
        if not handed_over:
            await done()


class ReleasingStream(StreamingResponse):
    """A stream that releases its request's admission and index lease however it ends: a body
    that never started (the client left before the first byte) runs no ``finally`` of its own."""

    def __init__(self, body: AsyncIterator[str], release: Callable[[], Awaitable[None]],
                 **kwargs: Any):  # fmt: skip
        super().__init__(body, **kwargs)
        self._release = release

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            try:
                await self.body_iterator.aclose()  # type: ignore[attr-defined]
            finally:
                await self._release()


async def _head(events: AsyncIterator[Event]) -> list[Event]:
    """Events up to the first token, so bad input found while retrieving or reading the prompt
    (say, a prompt longer than the context window) is an HTTP 400, not a broken stream."""
    head: list[Event] = []
    while not head or isinstance(head[-1], Retrieved):
        event = await anext(events, None)
        if event is None:
            break
        head.append(event)
    return head


async def _replay(head: list[Event], events: AsyncIterator[Event]) -> AsyncIterator[Event]:
    for event in head:
        yield event
    async for event in events:
        yield event


async def _collect(
    events: AsyncIterator[Event], reply: Reply, wire: Wire, state: ServerState, clock: TokenClock
) -> BaseModel:
    text: list[str] = []
    citations: list[Citation] = []
    trace: list[TraceStep] = []
    finished: Finished | None = None
    async for event in _replay(await _head(events), events):
        if isinstance(event, Step):
            trace.append(trace_step(event))
        elif isinstance(event, Retrieved):
            citations.extend(event.citations)
        elif isinstance(event, TokenText):
            clock.text()
            text.append(event.text)
        elif isinstance(event, Finished):
            finished = event
            state.metrics.finished(reply.route, clock.labels[1], event)
    assert finished is not None, "a strategy must end with Finished"
    return wire.full(reply.model, "".join(text), finished, citations_out(citations), trace or None)


async def _sse(
    head: list[Event],
    events: AsyncIterator[Event],
    reply: Reply,
    wire: Wire,
    state: ServerState,
    clock: TokenClock,
    deadline: Deadline,
    done: Callable[[], Awaitable[None]],
) -> AsyncIterator[str]:
    base = {
        "id": f"{wire.id_prefix}-{uuid.uuid4().hex}",
        "created": int(time.time()),
        "model": reply.model,
    }

    def sse(**parts: Any) -> str:
        chunk = wire.chunk(base, **parts)
        return "" if chunk is None else f"data: {chunk.model_dump_json(exclude_none=True)}\n\n"

    def error(e: RagServeError) -> str:
        return f"data: {json.dumps(ErrorResponse.of(e.message, e.error_type, e.param, e.code))}\n\n"

    try:
        first = sse(first=True)
        if first:
            yield first
        it = _replay(head, events)
        while True:
            event = await deadline.within(anext(it, None))
            if event is None:
                break
            if isinstance(event, Step):
                if reply.trace:
                    yield sse(rag_step=trace_step(event))
            elif isinstance(event, Retrieved):
                yield sse(citations=citations_out(event.citations))
            elif isinstance(event, TokenText):
                clock.text()
                yield sse(text=event.text)
            elif isinstance(event, Finished):
                state.metrics.finished(reply.route, clock.labels[1], event)
                yield sse(finish_reason=event.finish_reason)
                if reply.include_usage:
                    yield sse(usage=usage_out(event), no_choices=True)
    except RagServeError as e:
        if isinstance(e, DeadlineError):
            log.warning("stream stopped at its deadline (%g s)", deadline.seconds)
        yield error(e)
    except Exception:
        log.exception("error while streaming")
        yield f"data: {json.dumps(ErrorResponse.of('internal server error', 'server_error'))}\n\n"
    finally:
        await done()
    yield "data: [DONE]\n\n"
