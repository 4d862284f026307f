"""``single``: retrieve the top-k once for the last user message, then generate over them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from dataclasses import replace

from ragserve.corpus import DocStore
from ragserve.engine.events import Citation, Event, Finished, Retrieved, TokenText
from ragserve.engine.prompt import STOP, rag_messages
from ragserve.engine.request import RagRequest
from ragserve.errors import InputError
from ragserve.generation.base import Generator
from ragserve.retrieval.base import Retriever


class Engine:
    """Runs a request with the strategy it names, over one index and one generator."""

    def __init__(
        self,
        retrievers: Mapping[str, Retriever],
        docstore: DocStore,
        generator: Generator,
        default_retriever: str | None = None,
    ):
        """``default_retriever=None`` picks hybrid, else BM25, else whatever is loaded."""
        if default_retriever is None:
            default_retriever = next(
                (r for r in ("hybrid", "bm25") if r in retrievers), next(iter(retrievers), "")
            )
        if default_retriever not in retrievers:
            raise InputError(
                f"default retriever {default_retriever!r} is not loaded"
                f" (loaded: {', '.join(retrievers)})"
            )
        self.retrievers = dict(retrievers)
        self.docstore = docstore
        self.generator = generator
        self.default_retriever = default_retriever

    def retriever(self, name: str | None) -> Retriever:
        name = name or self.default_retriever
        if name not in self.retrievers:
            raise InputError(
                f"retriever {name!r} is not available; loaded: {', '.join(self.retrievers)}",
                param="rag.retriever",
            )
        return self.retrievers[name]

    async def retrieve(self, query: str, k: int, retriever: str | None) -> list[Citation]:
        r = self.retriever(retriever)
        hits = (await asyncio.to_thread(r.search, [query], k))[0]
        passages = await asyncio.to_thread(self.docstore.get, [h.doc_id for h in hits])
        return [
            Citation(i + 1, p.id, p.external_id, p.doc_id, p.title, p.text, h.score)
            for i, (h, p) in enumerate(zip(hits, passages, strict=True))
        ]

    async def run(self, request: RagRequest) -> AsyncIterator[Event]:
        messages, params = request.messages, request.params
        if request.rag.strategy == "single":
            citations = await self.retrieve(request.question, request.rag.k, request.rag.retriever)
            yield Retrieved(request.question, citations)
            messages = rag_messages(messages, citations)
            params = replace(params, stop=tuple(dict.fromkeys((*params.stop, *STOP))))
        prompt = self.generator.chat_template(messages)
        started = False
        async for chunk in self.generator.generate(prompt, params):
            text = chunk.text if started else chunk.text.lstrip()
            if text:
                started = True
                yield TokenText(text)
            if chunk.finish_reason is not None and chunk.usage is not None:
                yield Finished(chunk.finish_reason, chunk.usage)
