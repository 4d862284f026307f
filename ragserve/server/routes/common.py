"""What the generating routes share: body parsing, presets merged with ``rag``, sampling, and
the documented error responses."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from ragserve.config import Preset
from ragserve.engine import RagOptions
from ragserve.errors import InputError
from ragserve.generation.base import SamplingParams
from ragserve.server.protocol import ErrorResponse, SamplingRequest
from ragserve.server.state import ServerState

M = TypeVar("M", bound=BaseModel)
PARSE_INLINE_BYTES = 64 << 10  # larger bodies are parsed off the event loop

ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": text}
    for status, text in [
        (400, "Invalid request: the field at fault is in `error.param`"),
        (401, "Missing or unknown API key"),
        (404, "Unknown model or index"),
        (413, "Request body over the server's limit"),
        (429, "Over this key's request rate; retry after `Retry-After` seconds"),
        (503, "Too many requests in flight, or shutting down; retry after `Retry-After` seconds"),
        (504, "The request ran past the server's deadline"),
    ]
}

# One server-sent event: ``data`` holds a chunk as JSON, then ``[DONE]``.
SSE_EVENT = {
    "type": "object",
    "required": ["data"],
    "properties": {"data": {"type": "string"}, "event": {"type": "string"}},
}


def documented_body(model: str) -> dict[str, Any]:
    """The OpenAPI request body of a route that parses its own (``body_parser``)."""
    schema = {"$ref": f"#/components/schemas/{model}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def body_parser(model: type[M]) -> Callable[[Request], Awaitable[M]]:
    """A dependency parsing the body as JSON whatever the Content-Type says (``curl -d`` sends
    form-encoded)."""

    async def parse(request: Request) -> M:
        raw = await request.body()
        try:
            if len(raw) > PARSE_INLINE_BYTES:
                return await asyncio.to_thread(model.model_validate_json, raw)
            return model.model_validate_json(raw or b"{}")
        except ValidationError as e:
            raise RequestValidationError(e.errors(include_url=False)) from None

    return parse


def rag_options(
    body: SamplingRequest, preset: Preset, state: ServerState
) -> tuple[RagOptions, str | None]:
    """The request's retrieval: its model id's preset, overridden by what ``rag`` sets; and the
    index it runs on."""
    unsupported = body.unsupported()
    if unsupported:
        raise InputError(
            f"{unsupported} is not supported by this server; leave it out or set it to its default",
            param=unsupported,
            code="unsupported_parameter",
        )
    given = body.rag.model_fields_set

    def pick(name: str, preset_value: Any, fallback: Any) -> Any:
        if name in given:
            return getattr(body.rag, name)
        return fallback if preset_value is None else preset_value

    bound = state.settings.max_iterations
    iterations = pick("max_iterations", preset.max_iterations, None)
    if iterations is not None and iterations > bound:
        raise InputError(
            f"rag.max_iterations must be between 1 and {bound} on this server",
            param="rag.max_iterations",
        )
    rag = RagOptions(
        strategy=pick("strategy", preset.strategy, "single"),
        k=pick("k", preset.k, body.rag.k),
        retriever=pick("retriever", preset.retriever, None),
        max_iterations=min(iterations or 5, bound),
        max_passages=body.rag.max_passages,
        demonstrations=body.rag.demonstrations,
        anchor_queries=body.rag.anchor_queries,
        evidence_answer=body.rag.evidence_answer,
        grounded_answers=body.rag.grounded_answers,
        trace=body.rag.trace,
        speculative=pick("speculative", preset.speculative, False),
        seal_beam=body.rag.seal_beam,
        seal_key_tokens=body.rag.seal_key_tokens,
    )
    return rag, pick("index", preset.index, None)


def sampling(body: SamplingRequest, state: ServerState, asked: int | None) -> SamplingParams:
    return SamplingParams(
        max_tokens=asked or state.settings.max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        top_k=body.top_k,
        stop=tuple(body.stop or ()),
        seed=body.seed,
        fit_context=asked is None,
        ignore_eos=body.ignore_eos,
    )
