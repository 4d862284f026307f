"""``ralm``: In-Context RaLM as RaLMSpec ran it, with or without speculation.

Every ``STRIDE`` generated tokens the last ``QUERY_TOKENS`` tokens of question-then-answer are the
query; the top passage, cut to ``PASSAGE_TOKENS`` tokens, goes before the question, and the next
tokens are generated over it. ``rag.speculative`` answers those retrievals from the request's
cache first and verifies them in batches (``engine.speculative``): the same tokens, sooner.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from ragserve.engine.events import Citation, Event, Finished, Retrieved, TokenText
from ragserve.engine.prompt import NO_ANSWER, STOP
from ragserve.engine.request import RagRequest
from ragserve.engine.speculative import Search, SpecStats, Speculator, summary, verified_states
from ragserve.generation.base import Generator, SamplingParams, Usage
from ragserve.retrieval.base import Hit, Retriever

if TYPE_CHECKING:
    from ragserve.corpus import DocStore
    from ragserve.engine.core import Engine

STRIDE = 4  # tokens generated between retrievals
QUERY_TOKENS = 32  # the query: this many last tokens of question + answer so far
PASSAGE_TOKENS = 256  # the passage read, cut to this many tokens
PREFETCH = 20  # passages the first retrieval brings into the speculation cache


@dataclass(frozen=True)
class RalmState:
    """Where a request stands: the tokens generated, the passage each step read, and why it
    ended (None while it goes on). Immutable, so a rollback is keeping an older one."""

    generated: tuple[int, ...] = ()
    passages: tuple[int, ...] = ()
    finish: str | None = None


class Ralm:
    """One request's chain of retrieve-then-generate steps over one generator and retriever."""

    def __init__(
        self,
        generator: Generator,
        retriever: Retriever,
        docstore: DocStore,
        search: Search,
        question: str,
        params: SamplingParams,
        *,
        speculative: bool = False,
        passage_tokens: int = PASSAGE_TOKENS,
        **speculation: Any,
    ):
        """``speculation``: ``Speculator`` options (``prefetch``, ``fixed_stride``,
        ``asynchronous``), which the benchmark varies."""
        self.generator = generator
        self.passage_tokens = passage_tokens
        self.docstore = docstore
        self.params = params
        self.speculative = speculative
        self.question_ids = generator.tokenize(question)
        self.tail_ids = generator.tokenize(f"\n\nQuestion: {question}\nAnswer:")
        self._headers: dict[int, list[int]] = {}
        self.speculator: Speculator[RalmState] = Speculator(
            retriever,
            search,
            self.query,
            self.advance,
            k=1,
            search_k=PREFETCH,
            **speculation,
        )
        self.prompt_tokens = 0

    @property
    def stats(self) -> SpecStats:
        return self.speculator.stats

    def query(self, state: RalmState) -> str | None:
        if state.finish is not None:
            return None
        window = [*self.question_ids, *state.generated][-QUERY_TOKENS:]
        text = self.generator.detokenize(window).strip()
        return text or self.generator.detokenize(self.question_ids).strip() or "?"

    def _header(self, passage_id: int) -> list[int]:
        """BOS and the passage, cut to ``passage_tokens`` tokens (read once per request)."""
        if passage_id not in self._headers:
            p = self.docstore.get([passage_id])[0]
            text = f"{p.title}: {p.text}" if p.title else p.text
            ids = self.generator.tokenize(text, special=True)
            self._headers[passage_id] = ids[: self.passage_tokens + 1]
        return self._headers[passage_id]

    async def advance(self, state: RalmState, hits: list[Hit]) -> RalmState:
        """Up to ``STRIDE`` tokens over the top passage."""
        passage = hits[0].doc_id
        header = self._headers.get(passage) or await asyncio.to_thread(self._header, passage)
        prompt = [*header, *self.tail_ids, *state.generated]
        self.prompt_tokens = len(prompt)
        n = min(STRIDE, self.params.max_tokens - len(state.generated))
        params = replace(self.params, max_tokens=n, stop=(), fit_context=False)
        new: list[int] = []
        finish = None
        async for chunk in self.generator.generate(prompt, params):
            new.extend(chunk.token_ids)
            if chunk.finish_reason == "stop":
                finish = "stop"  # the end of generation
        generated = (*state.generated, *new)
        if finish is None and len(generated) >= self.params.max_tokens:
            finish = "length"
        text = self.generator.detokenize(generated)
        if finish is None and _stop_at(text, self.params.stop) is not None:
            finish = "stop"
        return RalmState(generated, (*state.passages, passage), finish)

    async def run(
        self, state: RalmState | None = None, on_verified: Callable[[RalmState], None] | None = None
    ) -> RalmState:
        chain = self.speculator.run if self.speculative else self.speculator.plain
        return await chain(state or RalmState(), on_verified)


def _stop_at(text: str, stop: Sequence[str] = ()) -> int | None:
    """Where the answer ends: the request's own stop strings, or one a base model writes after
    its answer."""
    cuts = [i for i in (text.find(s) for s in (*stop, *STOP)) if i >= 0]
    return min(cuts) if cuts else None


def settled(text: str, stop: Sequence[str] = ()) -> str:
    """The part of an unfinished answer that no later token can change: without a character
    still being written, and without a tail that a stop string may yet begin with (the answer
    would end before it). Streamed text is then the same however the steps are grouped."""
    text = text.rstrip("\ufffd")
    stops = (*stop, *STOP)
    for n in range(min(len(text), max(map(len, stops)) - 1), 0, -1):
        if any(s.startswith(text[-n:]) for s in stops):
            return text[:-n]
    return text


def answer_text(generator: Generator, state: RalmState, stop: Sequence[str] = ()) -> str:
    text = generator.detokenize(state.generated)
    cut = _stop_at(text, stop)
    return text if cut is None else text[:cut]


async def ralm(engine: Engine, request: RagRequest) -> AsyncIterator[Event]:
    """The ``ralm`` strategy: verified text streams as it is verified; citations at the end."""
    rag = request.rag
    retriever = engine.retriever(rag.retriever)
    run = Ralm(
        engine.generator,
        retriever,
        engine.docstore,
        engine.searcher(rag.retriever),
        request.question,
        request.params,
        speculative=rag.speculative,
    )
    sent = ""
    final = RalmState()
    async with contextlib.aclosing(verified_states(run.run, RalmState())) as states:
        async for final in states:
            text = answer_text(engine.generator, final, request.params.stop).lstrip()
            if final.finish is None:  # hold back what the next tokens may still change
                text = settled(text, request.params.stop)
            if text.startswith(sent) and len(text) > len(sent):
                yield TokenText(text[len(sent) :])
                sent = text
    if not sent:
        yield TokenText(NO_ANSWER["ralm"])
    citations = _citations(engine.docstore, final.passages)
    yield Retrieved(request.question, citations)
    usage = Usage(run.prompt_tokens, len(final.generated))
    yield Finished(final.finish or "length", usage, speculation=summary(run.stats, rag.speculative))


def _citations(docstore: DocStore, passages: Sequence[int]) -> list[Citation]:
    """The passages the answer was generated over, in the order first read."""
    ids = list(dict.fromkeys(passages))
    return [
        Citation(i + 1, p.id, p.external_id, p.doc_id, p.title, p.text, 0.0)
        for i, p in enumerate(docstore.get(ids))
    ]
