"""RaLMSpec (Zhang et al., 2024): speculative retrieval with batched verification, identical output.

A strategy that retrieves again and again describes itself as a chain of *steps*: each step has a
query (from the state so far) and, given that query's passages, advances the state (generates).
``Speculator.run`` drives the chain:

- the first retrieval is real and (with ``prefetch``) brings its top ``search_k`` passages
  into a per-request ``LocalCache``;
- each later query is answered from the cache, ranked with the retriever's own ``score`` (what
  ``search`` would give those passages), and the step goes on with that guess;
- after ``s`` guessed steps their queries go to the real retriever in one batched ``search``;
  at the first step whose real passages differ from the guess, the chain rolls back to the state
  before it and redoes it with the real passages; every verified result extends the cache;
- ``s`` comes from ``Stride`` (OS³): measured step latency ``a``, verification latency ``b``
  and acceptance rate ``γ`` over the last rounds;
- asynchronous verification runs the batched search in a worker thread while the next guessed
  steps generate.

Only the passage ids of a step decide what it generates, so a chain that keeps only verified
steps is the chain the plain loop (``speculative=False``) would have made, token for token, as
long as the generator is deterministic (greedy, batch-invariant). Steps are released to the
caller (``on_verified``) only once verified: no client ever sees output from a wrong guess.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from ragserve.engine.events import SpecSummary
from ragserve.retrieval.base import Hit, Retriever

S = TypeVar("S")  # a strategy's state: immutable, so rolling back is keeping an old one

Search = Callable[[Sequence[str], int], Awaitable[list[list[Hit]]]]
Pick = Callable[[S, list[Hit]], list[Hit]]


class LocalCache:
    """The passages one request has seen, ranked for a new query as the retriever would rank
    them (``score`` equals ``search`` on the passages it is given)."""

    def __init__(self, retriever: Retriever):
        self.retriever = retriever
        self.ids: dict[int, None] = {}  # insertion-ordered set

    def extend(self, hits: Sequence[Hit]) -> None:
        for h in hits:
            self.ids.setdefault(h.doc_id, None)

    def search(self, query: str, k: int) -> list[Hit]:
        ids = list(self.ids)
        hits = map(Hit, ids, self.retriever.score(query, ids))
        return sorted(hits, key=lambda h: (-h.score, h.doc_id))[:k]  # ties: lower id, as search


@dataclass
class Stride:
    """OS³: the speculation stride that maximises verified steps per second.

    Over the last ``window`` rounds: ``a`` the mean latency of a guessed step, ``b`` of a
    verification, ``γ`` the share of guesses that held (capped at ``gamma_max``, as the paper
    does, so one lucky round does not send the stride to its maximum). A round of ``s`` guesses
    keeps (1 − γ^s)/(1 − γ) steps on average and costs s·a + b; with asynchronous verification
    the search overlaps the next guess, so it costs (s − 1)·a + max(a, b).
    """

    window: int = 5
    gamma_max: float = 0.6
    max_stride: int = 8
    initial: int = 3
    rounds: deque[tuple[float, float, int, int]] = field(default_factory=deque)

    def record(self, step_s: float, verify_s: float, accepted: int, guessed: int) -> None:
        self.rounds.append((step_s, verify_s, accepted, guessed))
        while len(self.rounds) > self.window:
            self.rounds.popleft()

    def next(self, asynchronous: bool) -> int:
        if not self.rounds:
            return self.initial
        a = sum(r[0] for r in self.rounds) / len(self.rounds)
        b = sum(r[1] for r in self.rounds) / len(self.rounds)
        guessed = sum(r[3] for r in self.rounds)
        gamma = min(self.gamma_max, sum(r[2] for r in self.rounds) / max(guessed, 1))

        def rate(s: int) -> float:
            kept = (1 - gamma**s) / (1 - gamma)
            cost = (s - 1) * a + max(a, b) if asynchronous else s * a + b
            return kept / max(cost, 1e-9)

        return max(range(1, self.max_stride + 1), key=rate)


@dataclass
class SpecStats:
    """What a run did: retrieval calls (real and from the cache), guesses kept and redone."""

    searches: int = 0  # calls to the real retriever
    searched_queries: int = 0
    cache_hits: int = 0  # steps answered from the cache
    accepted: int = 0
    rollbacks: int = 0
    stopped: int = 0  # guessed steps stopped part-way: a verification under them had failed
    steps: int = 0
    strides: list[int] = field(default_factory=list)
    verify_seconds: float = 0.0


def summary(stats: SpecStats, speculative: bool) -> SpecSummary | None:
    """The request-level view of ``stats`` (``None`` where the request did not speculate)."""
    if not speculative:
        return None
    return SpecSummary(stats.steps, stats.accepted, stats.rollbacks)


@dataclass
class _Guess(Generic[S]):
    before: S  # the state the step started from
    query: str
    ids: list[int]  # the passages guessed
    after: S  # the state the guess led to


class Speculator(Generic[S]):
    """Drives a chain of retrieval steps, plainly or speculatively (see the module docstring).

    ``query(state)``: the next step's query, or None when the chain is done.
    ``advance(state, hits)``: the state after a step that read ``hits``.
    ``pick(state, ranking)``: the passages a step reads from a ranking (default: the top ``k``);
    a guess holds when the real ranking picks the same passages.
    ``search(queries, k)``: the real retriever, batched (``engine.batcher`` in the server).
    """

    def __init__(
        self,
        retriever: Retriever,
        search: Search,
        query: Callable[[S], str | None],
        advance: Callable[[S, list[Hit]], Awaitable[S]],
        *,
        k: int = 1,
        search_k: int = 20,
        pick: Pick[S] | None = None,
        prefetch: bool = True,
        stride: Stride | None = None,
        fixed_stride: int | None = None,
        asynchronous: bool = True,
    ):
        self.retriever = retriever
        self._search = search
        self.query = query
        self.advance = advance
        self.k = k
        self.search_k = max(search_k, k)
        self.pick: Pick[S] = pick or (lambda _state, hits: hits[: self.k])
        self.prefetch = prefetch
        self.stride = stride or Stride()
        self.fixed_stride = fixed_stride
        self.asynchronous = asynchronous
        self.stats = SpecStats()

    async def search(self, queries: Sequence[str]) -> list[list[Hit]]:
        """The real retriever, always ``search_k`` deep, in every mode: an approximate index may
        rank its top hits differently when asked for more, and the plain run must see the same."""
        self.stats.searches += 1
        self.stats.searched_queries += len(queries)
        return await self._search(queries, self.search_k)

    def _cache(self, cache: LocalCache, hits: list[Hit], read: list[Hit]) -> None:
        # Prefetch keeps every hit a search brought; without it, only the passages read.
        cache.extend(hits if self.prefetch else read)

    async def plain(self, state: S, on_verified: Callable[[S], None] | None = None) -> S:
        """The baseline: a real retrieval for every step."""
        while (q := self.query(state)) is not None:
            hits = (await self.search([q]))[0]
            state = await self.advance(state, self.pick(state, hits))
            self.stats.steps += 1
            if on_verified:
                on_verified(state)
        return state

    async def run(self, state: S, on_verified: Callable[[S], None] | None = None) -> S:
        """The same chain as ``plain``, with guessed retrievals verified in batches."""
        cache = LocalCache(self.retriever)
        q = self.query(state)
        if q is None:
            return state
        hits = (await self.search([q]))[0]
        read = self.pick(state, hits)
        self._cache(cache, hits, read)
        state = await self.advance(state, read)
        self.stats.steps += 1
        if on_verified:
            on_verified(state)
        pending: list[_Guess[S]] = []  # guessed steps, oldest first, none verified
        verifying: asyncio.Task[list[list[Hit]]] | None = None
        batch: list[_Guess[S]] = []  # the guesses ``verifying`` checks
        started = 0.0
        step_s: list[float] = []
        s = self._next_stride()
        try:
            while True:
                tip = pending[-1].after if pending else state
                q = self.query(tip)
                want_more = q is not None and len(pending) < (2 * s if verifying else s)
                if verifying is None and pending and (not want_more or len(pending) >= s):
                    batch = pending[:s]
                    started = time.perf_counter()
                    verifying = asyncio.ensure_future(self.search([g.query for g in batch]))
                    if self.asynchronous:  # guess on while the search runs
                        want_more = q is not None and len(pending) < 2 * s
                    else:
                        await asyncio.wait([verifying])
                if verifying is not None and (verifying.done() or not want_more):
                    real = await verifying
                    verifying = None
                    verify_s = time.perf_counter() - started
                    self.stats.verify_seconds += verify_s
                    state, pending, kept = await self._check(cache, state, pending, batch, real)
                    if on_verified:
                        on_verified(state)
                    a = sum(step_s) / len(step_s) if step_s else 0.0
                    self.stride.record(a, verify_s, kept, len(batch))
                    step_s = []
                    s = self._next_stride()
                    continue
                if not want_more:
                    break
                assert q is not None
                t = time.perf_counter()
                ranking = await asyncio.to_thread(cache.search, q, self.search_k)
                read = self.pick(tip, ranking)
                guess = _Guess(tip, q, [h.doc_id for h in read], tip)  # ``after``: once stepped
                pending.append(guess)
                if verifying is None and self.asynchronous and len(pending) >= s:
                    # The batch this guess completes is verified while its own step runs.
                    batch = pending[:s]
                    started = time.perf_counter()
                    verifying = asyncio.ensure_future(self.search([g.query for g in batch]))
                step = asyncio.ensure_future(self.advance(tip, read))
                if verifying is not None and await self._void(step, verifying, batch):
                    pending.pop()  # the step built on a wrong guess: stopped; roll back now
                    continue
                guess.after = await step
                step_s.append(time.perf_counter() - t)
                self.stats.cache_hits += 1
        finally:
            if verifying is not None and not verifying.done():
                verifying.cancel()  # a cancelled or failed request stops its verification
        return state

    async def _void(
        self,
        step: asyncio.Future[S],
        verifying: asyncio.Future[list[list[Hit]]],
        batch: list[_Guess[S]],
    ) -> bool:
        """Whether ``step`` was stopped because ``verifying`` found a wrong guess before it.

        A step may take longer than a search (an ``auto_rag`` turn is a whole generation): when
        the verification under it fails first, going on would only waste the work, so a wrong
        guess then costs no more time than waiting for the search would have.
        """
        try:
            await asyncio.wait([step, verifying], return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            step.cancel()
            raise
        if step.done() or verifying.exception() is not None:
            return False  # the step finished, or the loop's own check raises the error
        real = verifying.result()
        if all(
            [h.doc_id for h in self.pick(g.before, hits)] == g.ids
            for g, hits in zip(batch, real, strict=True)
        ):
            return False  # every guess held: the step stands
        step.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await step
        self.stats.stopped += 1
        return True

    def _next_stride(self) -> int:
        s = self.fixed_stride or self.stride.next(self.asynchronous)
        self.stats.strides.append(s)
        return s

    async def _check(
        self,
        cache: LocalCache,
        state: S,
        pending: list[_Guess[S]],
        batch: list[_Guess[S]],
        real: list[list[Hit]],
    ) -> tuple[S, list[_Guess[S]], int]:
        """Verified state, the guesses still pending after it, and how many guesses held."""
        truths = [self.pick(g.before, hits) for g, hits in zip(batch, real, strict=True)]
        for hits, truth in zip(real, truths, strict=True):
            self._cache(cache, hits, truth)
        for i, (guess, truth) in enumerate(zip(batch, truths, strict=True)):
            self.stats.steps += 1
            if [h.doc_id for h in truth] != guess.ids:
                self.stats.rollbacks += 1
                self.stats.accepted += i
                # Redo the step with the real passages; every guess after it is void.
                return await self.advance(guess.before, truth), [], i
        self.stats.accepted += len(batch)
        return batch[-1].after, pending[len(batch) :], len(batch)


async def verified_states(
    run: Callable[[S, Callable[[S], None]], Awaitable[S]], state: S
) -> AsyncIterator[S]:
    """Each verified state of ``run(state, on_verified)`` as it comes, then the final one.

    The chain runs as its own task, so a guessed step generates while the caller streams what
    is verified; closing the iterator (a dropped client) cancels the chain and its verification.
    """
    queue: asyncio.Queue[tuple[S] | None] = asyncio.Queue()

    async def drive() -> S:
        try:
            return await run(state, lambda verified: queue.put_nowait((verified,)))
        finally:
            queue.put_nowait(None)

    task = asyncio.ensure_future(drive())
    try:
        while (item := await queue.get()) is not None:
            yield item[0]
        yield await task  # the final state, or the chain's error
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
