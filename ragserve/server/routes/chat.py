"""``POST /v1/chat/completions``: parse, run the engine, format as OpenAI JSON or SSE chunks."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from fastapi import APIRouter, Depends, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response, StreamingResponse
from pydantic import ValidationError

from ragserve.engine import Event, Finished, RagOptions, RagRequest, Retrieved, Step, TokenText
from ragserve.engine.events import Citation
from ragserve.errors import InputError, RagServeError
from ragserve.generation.base import SamplingParams
from ragserve.server.protocol import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChunkChoice,
    CitationOut,
    Delta,
    ErrorResponse,
    TraceStep,
    UsageOut,
)
from ragserve.server.state import ServerState, get_state

router = APIRouter()
log = logging.getLogger("ragserve.server")
T = TypeVar("T")


def to_rag_request(body: ChatCompletionRequest, state: ServerState) -> RagRequest:
    unsupported = body.unsupported()
    if unsupported:
        raise InputError(
            f"{unsupported} is not supported by this server; leave it out or set it to its default",
            param=unsupported,
            code="unsupported_parameter",
        )
    messages = [
        {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
        for m in body.messages
    ]
    asked = body.max_completion_tokens or body.max_tokens
    params = SamplingParams(
        max_tokens=asked or state.settings.max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        top_k=body.top_k,
        stop=tuple(body.stop or ()),
        seed=body.seed,
        fit_context=asked is None,
    )
    asked_iterations = body.rag.max_iterations
    bound = state.settings.max_iterations
    if asked_iterations is not None and asked_iterations > bound:
        raise InputError(
            f"rag.max_iterations must be between 1 and {bound} on this server",
            param="rag.max_iterations",
        )
    rag = RagOptions(
        strategy=body.rag.strategy,
        k=body.rag.k,
        retriever=body.rag.retriever,
        max_iterations=min(asked_iterations or 5, bound),
        max_passages=body.rag.max_passages,
        demonstrations=body.rag.demonstrations,
        trace=body.rag.trace,
        speculative=body.rag.speculative,
        seal_beam=body.rag.seal_beam,
        seal_key_tokens=body.rag.seal_key_tokens,
    )
    return RagRequest(messages=messages, params=params, rag=rag)


def trace_step(step: Step) -> TraceStep:
    return TraceStep(
        iteration=step.iteration,
        kind=step.kind,  # type: ignore[arg-type]
        text=step.text,
        query=step.query,
        passages=list(step.passages),
        seconds=round(step.seconds, 4),
    )


def _citations(cs: list[Citation]) -> list[CitationOut]:
    return [
        CitationOut(
            index=c.index,
            id=c.external_id,
            doc_id=c.doc_id,
            title=c.title,
            text=c.text,
            score=c.score,
        )
        for c in cs
    ]


def _usage(f: Finished) -> UsageOut:
    u = f.usage
    return UsageOut(
        prompt_tokens=u.prompt_tokens,
        completion_tokens=u.completion_tokens,
        total_tokens=u.total_tokens,
    )


PARSE_INLINE_BYTES = 64 << 10  # larger bodies are parsed off the event loop


async def parse_body(request: Request) -> ChatCompletionRequest:
    """Parse JSON whatever the Content-Type says (``curl -d`` sends form-encoded)."""
    raw = await request.body()
    try:
        if len(raw) > PARSE_INLINE_BYTES:
            return await asyncio.to_thread(ChatCompletionRequest.model_validate_json, raw)
        return ChatCompletionRequest.model_validate_json(raw or b"{}")
    except ValidationError as e:
        raise RequestValidationError(e.errors(include_url=False)) from None


ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": text}
    for status, text in [
        (400, "Invalid request: the field at fault is in `error.param`"),
        (404, "Unknown model"),
        (413, "Request body over the server's limit"),
        (503, "Too many requests in flight; retry after `Retry-After` seconds"),
    ]
}

# One server-sent event: ``data`` holds a ``chat.completion.chunk`` as JSON, then ``[DONE]``.
SSE_EVENT = {
    "type": "object",
    "required": ["data"],
    "properties": {"data": {"type": "string"}, "event": {"type": "string"}},
}

CHAT_OPENAPI = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/ChatCompletionRequest"}}
        },
    }
}


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


@router.post(
    "/v1/chat/completions",
    response_model=None,
    openapi_extra=CHAT_OPENAPI,
    responses={
        200: {
            "model": ChatCompletion,
            "description": "The answer; with `stream: true`, server-sent `chat.completion.chunk`s",
            "content": {"text/event-stream": {"schema": SSE_EVENT}},
        },
        **ERRORS,
    },
)
async def chat_completions(
    request: Request,
    body: ChatCompletionRequest = Depends(parse_body),
    state: ServerState = Depends(get_state),
) -> ChatCompletion | StreamingResponse | Response:
    model = state.check_model(body.model)
    rag_request = to_rag_request(body, state)
    state.limiter.acquire()
    events = state.engine.run(rag_request).__aiter__()
    handed_over = False  # to the stream, which releases its admission when it ends
    try:
        if body.stream:
            head = await cancel_on_disconnect(request, _head(events))
            response = StreamingResponse(
                _sse(head, events, model, state.limiter.release, body.rag.trace),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
            handed_over = True
            return response
        return await cancel_on_disconnect(request, _complete(events, model))
    except ClientGone:
        log.info("client went away; request cancelled")
        return Response(status_code=499)
    finally:
        if not handed_over:
            state.limiter.release()
            await events.aclose()


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


async def _complete(events: AsyncIterator[Event], model: str) -> ChatCompletion:
    return await _collect(await _head(events), events, model)


async def _replay(head: list[Event], events: AsyncIterator[Event]) -> AsyncIterator[Event]:
    for event in head:
        yield event
    async for event in events:
        yield event


async def _collect(head: list[Event], events: AsyncIterator[Event], model: str) -> ChatCompletion:
    text: list[str] = []
    citations: list[Citation] = []
    trace: list[TraceStep] = []
    finished: Finished | None = None
    async for event in _replay(head, events):
        if isinstance(event, Step):
            trace.append(trace_step(event))
        elif isinstance(event, Retrieved):
            citations.extend(event.citations)
        elif isinstance(event, TokenText):
            text.append(event.text)
        elif isinstance(event, Finished):
            finished = event
    assert finished is not None, "a strategy must end with Finished"
    return ChatCompletion(
        model=model,
        choices=[
            Choice(
                message=AssistantMessage(content="".join(text)),
                finish_reason=finished.finish_reason,
            )
        ],
        usage=_usage(finished),
        citations=_citations(citations),
        rag_trace=trace or None,
    )


async def _sse(
    head: list[Event],
    events: AsyncIterator[Event],
    model: str,
    release: Callable[[], None],
    trace: bool,
) -> AsyncIterator[str]:
    cid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

    def chunk(delta: Delta, **extra: object) -> str:
        c = ChatCompletionChunk(
            id=cid,
            created=created,
            model=model,
            choices=[ChunkChoice(delta=delta, finish_reason=extra.pop("finish_reason", None))],
            **extra,
        )
        return f"data: {c.model_dump_json(exclude_none=True)}\n\n"

    try:
        yield chunk(Delta(role="assistant", content=""))
        async for event in _replay(head, events):
            if isinstance(event, Step):
                if trace:
                    yield chunk(Delta(), rag_step=trace_step(event))
            elif isinstance(event, Retrieved):
                yield chunk(Delta(), citations=_citations(event.citations))
            elif isinstance(event, TokenText):
                yield chunk(Delta(content=event.text))
            elif isinstance(event, Finished):
                yield chunk(Delta(), finish_reason=event.finish_reason, usage=_usage(event))
    except RagServeError as e:
        yield f"data: {json.dumps(ErrorResponse.of(e.message, e.error_type, e.param, e.code))}\n\n"
    except Exception:
        log.exception("error while streaming")
        yield f"data: {json.dumps(ErrorResponse.of('internal server error', 'server_error'))}\n\n"
    finally:
        release()
        await events.aclose()
    yield "data: [DONE]\n\n"
