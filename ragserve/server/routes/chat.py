"""``POST /v1/chat/completions``: parse, run the engine, format as OpenAI JSON or SSE chunks."""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncIterator

from fastapi import APIRouter, Depends, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import StreamingResponse
from pydantic import ValidationError

from ragserve.engine import Event, Finished, RagOptions, RagRequest, Retrieved, TokenText
from ragserve.engine.events import Citation
from ragserve.errors import RagServeError
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
    UsageOut,
)
from ragserve.server.state import ServerState, get_state

router = APIRouter()
log = logging.getLogger("ragserve.server")


def to_rag_request(body: ChatCompletionRequest, state: ServerState) -> RagRequest:
    messages = [
        {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
        for m in body.messages
    ]
    params = SamplingParams(
        max_tokens=body.max_completion_tokens or body.max_tokens or state.settings.max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        top_k=body.top_k,
        stop=tuple(body.stop or ()),
        seed=body.seed,
    )
    rag = RagOptions(strategy=body.rag.strategy, k=body.rag.k, retriever=body.rag.retriever)
    return RagRequest(messages=messages, params=params, rag=rag)


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


async def parse_body(request: Request) -> ChatCompletionRequest:
    """Parse JSON whatever the Content-Type says (``curl -d`` sends form-encoded)."""
    raw = await request.body()
    try:
        return ChatCompletionRequest.model_validate_json(raw or b"{}")
    except ValidationError as e:
        raise RequestValidationError(e.errors(include_url=False)) from None


@router.post("/v1/chat/completions", response_model=None)
async def chat_completions(
    body: ChatCompletionRequest = Depends(parse_body), state: ServerState = Depends(get_state)
) -> ChatCompletion | StreamingResponse:
    model = state.check_model(body.model)
    request = to_rag_request(body, state)
    state.limiter.acquire()
    events = state.engine.run(request).__aiter__()
    try:
        # Read up to the first token, so bad input found while retrieving or reading the prompt
        # (say, a prompt longer than the context window) is an HTTP 400, not a broken stream.
        head: list[Event] = []
        while not head or isinstance(head[-1], Retrieved):
            event = await anext(events, None)
            if event is None:
                break
            head.append(event)
    except BaseException:
        state.limiter.release()
        await events.aclose()
        raise
    if body.stream:
        return StreamingResponse(
            _sse(head, events, model, state),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    try:
        return await _collect(head, events, model)
    finally:
        state.limiter.release()
        await events.aclose()


async def _replay(head: list[Event], events: AsyncIterator[Event]) -> AsyncIterator[Event]:
    for event in head:
        yield event
    async for event in events:
        yield event


async def _collect(head: list[Event], events: AsyncIterator[Event], model: str) -> ChatCompletion:
    text: list[str] = []
    citations: list[Citation] = []
    finished: Finished | None = None
    async for event in _replay(head, events):
        if isinstance(event, Retrieved):
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
    )


async def _sse(
    head: list[Event], events: AsyncIterator[Event], model: str, state: ServerState
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
            if isinstance(event, Retrieved):
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
        state.limiter.release()
        await events.aclose()
    yield "data: [DONE]\n\n"
