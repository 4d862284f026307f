"""``single``: retrieve the top-k once for the last user message, then answer over them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from ragserve.engine.events import Event, Retrieved
from ragserve.engine.request import RagRequest

if TYPE_CHECKING:
    from ragserve.engine.core import Engine


async def single(engine: Engine, request: RagRequest) -> AsyncIterator[Event]:
    rag = request.rag
    citations = await engine.retrieve(request.question, rag.k, rag.retriever)
    prompt, citations = await engine.fit_passages(request, citations)
    yield Retrieved(request.question, citations)
    async for event in engine.answer(prompt, request.params, "single"):
        yield event
