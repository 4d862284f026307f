"""The engine: one index and one generator, and the strategies dispatched by name over them.

Each strategy is its own module (``single``, ``auto_rag``); what they share lives here:
retrieval as citations, the size checks, and answer generation that stops where an answer ends.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import replace

from ragserve.corpus import DocStore
from ragserve.engine.answer_guard import RepeatGuard
from ragserve.engine.auto_rag import AutoRag
from ragserve.engine.batcher import SearchBatcher
from ragserve.engine.events import Citation, Event, Finished, TokenText
from ragserve.engine.prompt import NO_ANSWER, STOP, rag_messages, rag_text
from ragserve.engine.ralm import ralm
from ragserve.engine.request import RagOptions, RagRequest
from ragserve.engine.single import single
from ragserve.engine.speculative import Search
from ragserve.errors import ContextLengthError, InputError, RagServeError
from ragserve.generation.base import Generator, SamplingParams, Usage
from ragserve.retrieval.base import Hit, Retriever
from ragserve.retrieval.registry import fuse

log = logging.getLogger("ragserve.engine")

# No tokenizer we know packs more characters into one token on average over a whole prompt, so
# a prompt with more characters than this times the context cannot fit: refused untokenized.
MAX_CHARS_PER_TOKEN = 32
# Next-token candidates searched for one that shows text, when an answer came back empty.
OPENING_CANDIDATES = 20


class Engine:
    """Runs a request with the strategy it names, over one index and one generator."""

    def __init__(
        self,
        retrievers: Mapping[str, Retriever],
        docstore: DocStore,
        generator: Generator,
        default_retriever: str | None = None,
        *,
        batch_searches: bool = True,
    ):
        """``default_retriever=None`` picks hybrid, else BM25, else whatever is loaded.
        ``batch_searches=False`` gives each request's searches their own retriever calls (the
        baseline the cross-request batcher is measured against)."""
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
        self.batchers = {name: SearchBatcher(r) for name, r in self.retrievers.items()}
        self.batch_searches = batch_searches
        self._bound: asyncio.AbstractEventLoop | None = None
        # Told of every search a request makes (retriever, queries, seconds): the server's metrics.
        self.on_search: Callable[[str, int, float], None] | None = None

    def _searched(self, name: str | None, queries: int, t0: float) -> None:
        if self.on_search is not None:
            self.on_search(name or self.default_retriever, queries, time.perf_counter() - t0)

    def retriever(self, name: str | None) -> Retriever:
        """A loaded retriever by name; ``a+b+c`` fuses loaded ones (``hybrid``), made once."""
        name = name or self.default_retriever
        if name not in self.retrievers and (fused := fuse(self.retrievers, name)) is not None:
            self.retrievers[name] = fused
            self.batchers[name] = SearchBatcher(fused)
        if name not in self.retrievers:
            raise InputError(
                f"retriever {name!r} is not available; loaded: {', '.join(self.retrievers)}"
                " (or several joined by '+', fused)",
                param="rag.retriever",
            )
        return self.retrievers[name]

    def for_request(self, rag: RagOptions) -> Engine:
        """This engine, or a view of it whose SEAL retriever uses the request's beam settings
        (its searches then go unbatched: no other request shares those settings)."""
        changes = {
            k: v
            for k, v in (("beam", rag.seal_beam), ("key_tokens", rag.seal_key_tokens))
            if v is not None
        }
        seal = self.retrievers.get("seal")
        if not changes or seal is None:
            return self
        variant = seal.variant(**changes)  # type: ignore[attr-defined]
        view = copy.copy(self)
        view.retrievers = {
            name: variant if r is seal else with_member(r, seal, variant)
            for name, r in self.retrievers.items()
        }
        view.batchers = {}  # unused: its searches are its own
        view.batch_searches = False
        return view

    def bind_loop(self) -> None:
        """Hand retrievers that run model work (SEAL) the event loop the model runs on."""
        loop = asyncio.get_running_loop()
        if self._bound is loop:
            return
        self._bound = loop
        for r in self.retrievers.values():
            for part in (r, *getattr(r, "members", ())):
                bind = getattr(part, "bind", None)
                if bind is not None:
                    bind(loop)

    def searcher(self, name: str | None) -> Search:
        """Batched search on a retriever, shared by concurrent requests (``engine.batcher``)."""
        retriever = self.retriever(name)
        if self.batch_searches:
            batched = self.batchers[name or self.default_retriever].search
        else:

            async def batched(queries: Sequence[str], k: int) -> list[list[Hit]]:
                return await asyncio.to_thread(retriever.search, queries, k)

        async def search(queries: Sequence[str], k: int) -> list[list[Hit]]:
            t0 = time.perf_counter()
            try:
                return await batched(queries, k)
            finally:
                self._searched(name, len(queries), t0)

        return search

    async def retrieve(self, query: str, k: int, retriever: str | None) -> list[Citation]:
        r = self.retriever(retriever)
        t0 = time.perf_counter()
        try:
            hits = (await asyncio.to_thread(r.search, [query], k))[0]
        finally:
            self._searched(retriever, 1, t0)
        passages = await asyncio.to_thread(self.docstore.get, [h.doc_id for h in hits])
        return [
            Citation(i + 1, p.id, p.external_id, p.doc_id, p.title, p.text, h.score)
            for i, (h, p) in enumerate(zip(hits, passages, strict=True))
        ]

    def check_size(self, request: RagRequest) -> None:
        """Refuse a prompt that cannot fit by its characters alone, before tokenizing it."""
        chars = sum(len(m["content"]) for m in request.messages)
        limit = self.generator.context_length * MAX_CHARS_PER_TOKEN
        if chars > limit:
            raise InputError(
                f"messages hold {chars} characters, more than a"
                f" {self.generator.context_length}-token context window can take",
                param="messages",
                code="context_length_exceeded",
            )

    def render(self, request: RagRequest, citations: Sequence[Citation]) -> str:
        """The prompt over ``citations``: chat-templated, or a text prompt with them before it."""
        if request.prompt is not None:
            return rag_text(request.prompt, citations)
        return self.generator.chat_template(rag_messages(request.messages, citations))

    async def fit_passages(
        self, request: RagRequest, citations: list[Citation]
    ) -> tuple[str, list[Citation]]:
        """The prompt with as many of ``citations`` as leave room for ``max_tokens`` of answer."""
        room = self.generator.context_length - request.params.max_tokens

        async def fits(n: int) -> bool:
            return await self._count_tokens(self.render(request, citations[:n])) <= room

        n = len(citations)
        if not await fits(n):
            lo, hi = 0, n - 1  # the largest count that fits, by bisection
            while lo < hi:
                mid = (lo + hi + 1) // 2
                lo, hi = (mid, hi) if await fits(mid) else (lo, mid - 1)
            n = lo  # every count above 0 that bisection kept was checked to fit
            if n == 0:
                bare = await self._count_tokens(self.render(request, []))
                if bare >= self.generator.context_length:  # the question alone cannot fit
                    raise ContextLengthError(bare, self.generator.context_length)
                raise InputError(
                    f"the messages and max_tokens={request.params.max_tokens} leave no room for"
                    f" a passage in the {self.generator.context_length}-token context window",
                    param="messages" if request.params.fit_context else "max_tokens",
                    code="context_length_exceeded",
                )
            log.info("kept %d of %d passages to fit the context window", n, len(citations))
        return self.render(request, citations[:n]), citations[:n]

    async def run(self, request: RagRequest) -> AsyncIterator[Event]:
        """The request's strategy, by name, as a stream of events."""
        self.check_size(request)
        strategy = request.rag.strategy
        if strategy != "none":
            self.retriever(request.rag.retriever)  # an unknown retriever is a 400 before any work
            view = self.for_request(request.rag)
            if view is not self:
                async for event in view.run(
                    replace(request, rag=replace(request.rag, seal_beam=None, seal_key_tokens=None))
                ):
                    yield event
                return
        self.bind_loop()
        if strategy == "auto_rag":
            name = request.rag.retriever
            retriever, search = self.retriever(name), self.searcher(name)
            events = AutoRag(
                self.generator,
                retriever,
                self.docstore,
                search,
                request,
                answer_over=lambda cites: self.answer_over(request, cites, strategy),
            ).run()
        elif strategy == "single":
            events = single(self, request)
        elif strategy == "ralm":
            events = ralm(self, request)
        else:
            prompt = request.prompt
            if prompt is None:
                prompt = self.generator.chat_template(request.messages)
            events = self.answer(prompt, request.params, strategy, plain=request.prompt is not None)
        async for event in events:
            yield event

    async def answer_over(
        self, request: RagRequest, citations: list[Citation], strategy: str
    ) -> AsyncIterator[TokenText | Finished]:
        """The answer over ``citations`` (as many as fit), as ``single`` writes it."""
        prompt, _ = await self.fit_passages(request, citations)
        async for event in self.answer(prompt, request.params, strategy):
            yield event

    async def answer(
        self, prompt: str, params: SamplingParams, strategy: str, *, plain: bool = False
    ) -> AsyncIterator[TokenText | Finished]:
        """Generate an answer a user can read: cut at its first repeat, never empty.
        ``plain``: the continuation as the model writes it, stopped only by ``params`` (``none``
        on a text prompt: what ``/v1/completions`` promises).

        A small base model sometimes opens its answer on a new line with a label it is stopped
        at (``Answer:`` again), or with a list of the passages: nothing to show. That answer is
        written again, opening on the likeliest next token that shows text (line breaks and
        end-of-text masked, as Whisper's decoder suppresses a blank first token); an answer that
        shows text the first time is never touched."""
        if plain:
            async for event in self._written(prompt, params, None):
                yield event
            return
        params = replace(params, stop=tuple(dict.fromkeys((*params.stop, *STOP))))
        guard, finish, usage = RepeatGuard(), "length", Usage(0, 0)
        async for event in self._written(prompt, params, guard):
            if isinstance(event, Finished):
                finish, usage = event.finish_reason, event.usage
            else:
                yield event
        if not guard.emitted and params.max_tokens > 1:
            ids = await asyncio.to_thread(self.generator.tokenize, prompt, special=True)
            opening = await self._visible_opening(ids)
            if opening is not None:
                guard = RepeatGuard()
                retry = replace(params, max_tokens=params.max_tokens - 1)
                text = self.generator.detokenize([opening])
                async for event in self._written([*ids, opening], retry, guard, text):
                    if isinstance(event, Finished):
                        finish = event.finish_reason
                        # Both tries were generated: count them, and the opening token.
                        done = usage.completion_tokens + event.usage.completion_tokens + 1
                        usage = Usage(usage.prompt_tokens, done)
                    else:
                        yield event
        if not guard.emitted:
            yield TokenText(NO_ANSWER[strategy])
        yield Finished(finish, usage)

    async def _written(
        self,
        prompt: str | list[int],
        params: SamplingParams,
        guard: RepeatGuard | None,
        opening: str = "",
    ) -> AsyncIterator[TokenText | Finished]:
        """One generation, through ``guard`` when there is one; ``opening``: text the prompt's
        last token wrote, which the answer begins with."""
        produced, finish, usage = 0, "length", None
        stream = self.generator.generate(prompt, params)
        try:
            async for chunk in stream:
                produced += len(chunk.token_ids)
                if chunk.usage is not None:
                    finish, usage = chunk.finish_reason or finish, chunk.usage
                text, opening = opening + chunk.text, ""
                if guard is not None:
                    text = guard.feed(text)
                if text:
                    yield TokenText(text)
                if guard is not None and guard.stopped:
                    finish = "stop"
                    break
        finally:
            await stream.aclose()
        if guard is not None:
            tail = guard.feed(opening) + guard.flush()
            if tail:
                yield TokenText(tail)
        if usage is None:  # stopped early: the backend's count never came
            if isinstance(prompt, str):
                usage = Usage(await self._count_tokens(prompt), produced)
            else:
                usage = Usage(len(prompt), produced)
        yield Finished(finish, usage)

    async def _visible_opening(self, ids: list[int]) -> int | None:
        """The likeliest next token after ``ids`` that shows text on the answer's first line.
        Best effort: where the backend cannot say (an upstream server that caps ``logprobs``
        lower, say), the answer falls back to the plain sentence rather than failing."""
        try:
            top_tokens = await self.generator.next_token_topk([ids], OPENING_CANDIDATES)
        except RagServeError as e:
            log.warning("empty answer not written again: %s", e)
            return None
        for top in top_tokens[0]:
            text = self.generator.detokenize([top.token_id])
            if text.strip() and "\n" not in text:
                return top.token_id
        return None

    async def _count_tokens(self, prompt: str) -> int:
        return len(await asyncio.to_thread(self.generator.tokenize, prompt, special=True))


def with_member(r: Retriever, old: Retriever, new: Retriever) -> Retriever:
    """``r``, or a fusion like it with member ``old`` replaced by ``new``."""
    members = getattr(r, "members", None)
    if not members or old not in members:
        return r
    from ragserve.retrieval.hybrid import HybridRetriever

    return HybridRetriever(
        [new if m is old else m for m in members],
        method=r.method,  # type: ignore[attr-defined]
        depth=r.depth,  # type: ignore[attr-defined]
    )
