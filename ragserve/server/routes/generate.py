"""The generating routes: ``POST /v1/chat/completions`` (messages in, chat deltas out) and
``POST /v1/completions`` (a text prompt continued as written, no chat template; with the
passages before it where the preset retrieves). They differ only in parsing and wire shapes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel

from ragserve.engine import Finished, RagOptions, RagRequest
from ragserve.server import runner
from ragserve.server.auth import api_key
from ragserve.server.protocol import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChunkChoice,
    CitationOut,
    Completion,
    CompletionChoice,
    CompletionChunk,
    CompletionRequest,
    Delta,
    SamplingRequest,
    TraceStep,
)
from ragserve.server.routes.common import (
    ERRORS,
    SSE_EVENT,
    body_parser,
    documented_body,
    rag_options,
    sampling,
)
from ragserve.server.state import ServerState, get_state

router = APIRouter()
CHAT, TEXT = "/v1/chat/completions", "/v1/completions"
PARSE_CHAT, PARSE_TEXT = body_parser(ChatCompletionRequest), body_parser(CompletionRequest)


class ChatWire:
    id_prefix = "chatcmpl"

    def full(
        self, model: str, text: str, finished: Finished, citations: list[CitationOut],
        trace: list[TraceStep] | None,
    ) -> BaseModel:  # fmt: skip
        choice = Choice(
            message=AssistantMessage(content=text), finish_reason=finished.finish_reason
        )
        return ChatCompletion(
            model=model, choices=[choice], usage=runner.usage_out(finished), citations=citations,
            rag_trace=trace,
        )  # fmt: skip

    def chunk(self, base: dict[str, Any], **parts: Any) -> BaseModel:
        if parts.pop("no_choices", False):
            return ChatCompletionChunk(**base, choices=[], **parts)
        if parts.pop("first", False):
            delta = Delta(role="assistant", content="")
        else:
            delta = Delta(content=parts.pop("text", None))
        choice = ChunkChoice(delta=delta, finish_reason=parts.pop("finish_reason", None))
        return ChatCompletionChunk(**base, choices=[choice], **parts)


class TextWire:
    id_prefix = "cmpl"

    def full(
        self, model: str, text: str, finished: Finished, citations: list[CitationOut],
        trace: list[TraceStep] | None,
    ) -> BaseModel:  # fmt: skip
        choice = CompletionChoice(text=text, finish_reason=finished.finish_reason)
        return Completion(
            model=model, choices=[choice], usage=runner.usage_out(finished), citations=citations,
            rag_trace=trace,
        )  # fmt: skip

    def chunk(self, base: dict[str, Any], **parts: Any) -> BaseModel | None:
        if parts.pop("first", False):
            return None  # text completions have no role chunk
        if parts.pop("no_choices", False):
            return CompletionChunk(**base, choices=[], **parts)
        choice = CompletionChoice(
            text=parts.pop("text", None) or "", finish_reason=parts.pop("finish_reason", None)
        )
        return CompletionChunk(**base, choices=[choice], **parts)


def _documented(schema: str, response: type[BaseModel], what: str) -> dict[str, Any]:
    ok = {"model": response, "description": what,
          "content": {"text/event-stream": {"schema": SSE_EVENT}}}  # fmt: skip
    return {
        "response_model": None,
        "openapi_extra": documented_body(schema),
        "responses": {200: ok, **ERRORS},
    }


async def _answer(
    request: Request,
    state: ServerState,
    body: SamplingRequest,
    route: str,
    wire: runner.Wire,
    make: Callable[[RagOptions], RagRequest],
) -> BaseModel | Response:
    model, preset = state.preset(body.model)
    rag, index = rag_options(body, preset, state)
    reply = runner.Reply(route, model, body.stream, body.include_usage, rag.trace, index)
    return await runner.run(request, state, make(rag), reply, wire)


@router.post(
    CHAT,
    **_documented(
        "ChatCompletionRequest", ChatCompletion,
        "The answer; with `stream: true`, server-sent `chat.completion.chunk`s",
    ),
)  # fmt: skip
async def chat_completions(
    request: Request,
    body: ChatCompletionRequest = Depends(PARSE_CHAT),
    state: ServerState = Depends(get_state),
    _: str = Depends(api_key),
) -> BaseModel | StreamingResponse | Response:
    messages = [
        {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
        for m in body.messages
    ]
    params = sampling(body, state, body.max_completion_tokens or body.max_tokens)
    return await _answer(
        request, state, body, CHAT, ChatWire(), lambda rag: RagRequest(messages, params, rag)
    )


@router.post(
    TEXT,
    **_documented(
        "CompletionRequest", Completion,
        "The continuation; with `stream: true`, server-sent `text_completion` chunks",
    ),
)  # fmt: skip
async def completions(
    request: Request,
    body: CompletionRequest = Depends(PARSE_TEXT),
    state: ServerState = Depends(get_state),
    _: str = Depends(api_key),
) -> BaseModel | StreamingResponse | Response:
    params = sampling(body, state, body.max_tokens)
    return await _answer(
        request,
        state,
        body,
        TEXT,
        TextWire(),
        lambda rag: RagRequest.text(body.text(), params, rag),
    )
