"""The speculation layer's control flow (cache, verify, rollback, OS³, async, cross-request
batching) over a small numpy retriever and scripted steps; the real model runs it in
``tests/integration/test_speculation.py``."""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from collections.abc import Sequence

import numpy as np
import pytest

from ragserve.engine.batcher import SearchBatcher
from ragserve.engine.speculative import LocalCache, Speculator, Stride, verified_states
from ragserve.errors import InputError
from ragserve.retrieval.base import Hit, check_doc_ids, check_queries, top_k


class VectorRetriever:
    """Inner product over random unit vectors; a query's vector comes from its hash."""

    name = "vectors"

    def __init__(self, n: int = 200, dim: int = 8, seed: int = 0, delay_s: float = 0.0):
        """``delay_s``: how long each search call takes, as a real index would."""
        self.delay_s = delay_s
        rng = np.random.default_rng(seed)
        v = rng.normal(size=(n, dim))
        self.vectors = v / np.linalg.norm(v, axis=1, keepdims=True)
        self.calls: list[int] = []
        self.fail = False
        self.lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.vectors)

    def _q(self, query: str) -> np.ndarray:
        seed = int.from_bytes(hashlib.sha256(query.encode()).digest()[:8], "little")
        return np.random.default_rng(seed).normal(size=self.vectors.shape[1])

    def search(self, queries: Sequence[str], k: int) -> list[list[Hit]]:
        k = check_queries(queries, k, len(self))
        with self.lock:
            self.calls.append(len(queries))
        if self.fail:
            raise RuntimeError("index unavailable")
        time.sleep(self.delay_s)
        return [top_k(self.vectors @ self._q(q), k) for q in queries]

    def score(self, query: str, doc_ids: Sequence[int]) -> list[float]:
        ids = check_doc_ids(doc_ids, len(self))
        return [float(x) for x in self.vectors[ids] @ self._q(query)]


def chain(retriever: VectorRetriever, steps: int, drift: int, **kw):  # type: ignore[no-untyped-def]
    """A chain whose state is the tuple of passages read; the query drifts every ``drift`` steps
    (so guesses sometimes miss), and depends on what was read (so a wrong guess changes it)."""

    def query(state: tuple[int, ...]) -> str | None:
        if len(state) >= steps:
            return None
        return f"topic {len(state) // drift} after {state[-1] % 3 if state else -1}"

    async def advance(state: tuple[int, ...], hits: list[Hit]) -> tuple[int, ...]:
        await asyncio.sleep(0.001)
        return (*state, hits[0].doc_id)

    async def search(queries: Sequence[str], k: int) -> list[list[Hit]]:
        return await asyncio.to_thread(retriever.search, queries, k)

    return Speculator(retriever, search, query, advance, **kw)


def test_cache_ranks_as_the_full_search_would() -> None:
    r = VectorRetriever()
    cache = LocalCache(r)
    full = r.search(["some query"], 50)[0]
    cache.extend(full[::-1])  # insertion order must not matter
    assert [h.doc_id for h in cache.search("some query", 5)] == [h.doc_id for h in full[:5]]
    cache.extend(r.search(["another"], 3)[0])
    assert [h.doc_id for h in cache.search("some query", 3)] == [h.doc_id for h in full[:3]]


@pytest.mark.parametrize("asynchronous", [False, True])
@pytest.mark.parametrize("fixed", [None, 1, 3, 8])
@pytest.mark.parametrize("drift", [1, 3, 50])
def test_speculative_chain_equals_the_plain_one(asynchronous, fixed, drift) -> None:  # type: ignore[no-untyped-def]
    r = VectorRetriever()
    plain = chain(r, 30, drift)
    spec = chain(r, 30, drift, asynchronous=asynchronous, fixed_stride=fixed)
    want = asyncio.run(plain.plain(()))
    seen: list[tuple[int, ...]] = []
    got = asyncio.run(spec.run((), seen.append))
    assert got == want
    assert all(want[: len(s)] == s for s in seen)  # only verified prefixes are released
    assert [len(s) for s in seen] == sorted(len(s) for s in seen)
    st = spec.stats
    assert st.steps == 30 and plain.stats.searches == 30
    if drift == 50 and (fixed or 0) > 1:
        assert st.searches <= 2 + st.rollbacks + -(-29 // fixed)  # batches save calls
    if drift == 1:
        assert st.rollbacks > 0  # every step asks about a new topic: guesses miss
    if drift == 50:
        assert st.rollbacks <= 2 and st.accepted >= 27  # the cache soon holds every answer


def test_a_pick_decides_what_must_match() -> None:
    """auto_rag's pick: the first two passages not read yet. A guess holds when the real ranking
    picks the same passages, whatever else it ranks differently."""
    r = VectorRetriever()

    def query(state: tuple[int, ...]) -> str | None:
        return None if len(state) >= 24 else f"topic {len(state) // 6}"

    def unread(state: tuple[int, ...], hits: list[Hit]) -> list[Hit]:
        return [h for h in hits if h.doc_id not in state][:2]

    async def advance(state: tuple[int, ...], hits: list[Hit]) -> tuple[int, ...]:
        assert not set(state) & {h.doc_id for h in hits}
        return (*state, *(h.doc_id for h in hits))

    async def search(queries: Sequence[str], k: int) -> list[list[Hit]]:
        assert k == 30
        return r.search(queries, k)

    def make(**kw):  # type: ignore[no-untyped-def]
        return Speculator(r, search, query, advance, k=30, search_k=30, pick=unread, **kw)

    want = asyncio.run(make().plain(()))
    spec = make(fixed_stride=4)
    assert asyncio.run(spec.run(())) == want
    assert len(want) == 24 and spec.stats.accepted > 0 and spec.stats.searches < 12


def test_verified_states_stream_then_end_with_the_final_state() -> None:
    r = VectorRetriever()
    spec = chain(r, 12, 3, fixed_stride=3)

    async def go() -> list[tuple[int, ...]]:
        return [s async for s in verified_states(spec.run, ())]

    seen = asyncio.run(go())
    assert len(seen) >= 2 and len(seen[-1]) == 12
    assert all(seen[-1][: len(s)] == s for s in seen)
    r.fail = True
    with pytest.raises(RuntimeError, match="unavailable"):
        asyncio.run(go())


def test_a_long_step_on_a_wrong_guess_stops_when_its_verification_fails() -> None:
    """auto_rag's steps are whole turns: one built on a guess that verification has already
    refuted is stopped, not finished, and the chain is still the plain one."""
    r = VectorRetriever(delay_s=0.01)
    finished: list[int] = []

    def query(state: tuple[int, ...]) -> str | None:
        return None if len(state) >= 8 else f"new topic {len(state)}"  # guesses mostly miss

    async def advance(state: tuple[int, ...], hits: list[Hit]) -> tuple[int, ...]:
        await asyncio.sleep(0.2)  # a turn: far longer than the search
        finished.append(len(state))
        return (*state, hits[0].doc_id)

    async def searcher(queries: Sequence[str], k: int) -> list[list[Hit]]:
        return await asyncio.to_thread(r.search, queries, k)

    def make(**kw):  # type: ignore[no-untyped-def]
        return Speculator(r, searcher, query, advance, **kw)

    want = asyncio.run(make().plain(()))
    finished.clear()
    spec = make(fixed_stride=1, prefetch=False)
    assert asyncio.run(spec.run(())) == want
    assert spec.stats.rollbacks > 0 and spec.stats.stopped > 0
    assert len(finished) < 8 + spec.stats.rollbacks  # stopped steps never finished


def test_a_retriever_error_in_verification_fails_the_run() -> None:
    r = VectorRetriever()
    spec = chain(r, 12, 2, asynchronous=True)

    async def go() -> None:
        task = asyncio.ensure_future(spec.run(()))
        await asyncio.sleep(0.02)
        r.fail = True
        await task

    with pytest.raises(RuntimeError, match="index unavailable"):
        asyncio.run(go())


def test_cancelling_a_run_cancels_its_verification() -> None:
    r = VectorRetriever()
    started = asyncio.Event()
    cancelled = []

    async def slow_search(queries: Sequence[str], k: int) -> list[list[Hit]]:
        if len(r.calls) >= 1:
            started.set()
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                cancelled.append(len(queries))
                raise
        return r.search(queries, k)

    spec = chain(r, 20, 50, asynchronous=True)
    spec._search = slow_search

    async def go() -> None:
        task = asyncio.ensure_future(spec.run(()))
        await asyncio.wait_for(started.wait(), 5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(go())
    assert cancelled  # the pending verification heard of it


def test_stride_follows_acceptance_and_costs() -> None:
    s = Stride()
    assert s.next(False) == s.initial
    for _ in range(5):
        s.record(0.01, 0.05, 0, 4)  # nothing held: verify every step
    assert s.next(False) == 1
    s = Stride()
    for _ in range(5):
        s.record(0.01, 0.2, 4, 4)  # all held, verification dear: speculate further
    assert s.next(False) > 3
    assert len(s.rounds) == s.window
    cheap = Stride()
    for _ in range(5):
        cheap.record(0.05, 0.001, 4, 4)  # verification nearly free: short strides lose little
    assert cheap.next(False) <= s.next(False)


def test_batcher_joins_concurrent_searches_and_splits_results() -> None:
    r = VectorRetriever()
    b = SearchBatcher(r, window_s=0.01)

    async def go() -> list[list[list[Hit]]]:
        return await asyncio.gather(*(b.search([f"q{i}", f"p{i}"], 3) for i in range(10)))

    got = asyncio.run(go())
    assert r.calls == [20]  # one call for all ten requests
    for i, hits in enumerate(got):
        assert hits == r.search([f"q{i}", f"p{i}"], 3)
    assert b.stats.calls == 1 and b.stats.requests == 10


def test_searches_arriving_during_a_batch_go_together_next() -> None:
    r = VectorRetriever(delay_s=0.1)
    b = SearchBatcher(r, window_s=0.001)

    async def late(i: int) -> list[list[Hit]]:
        await asyncio.sleep(0.01 * i)  # spread over the first batch's run
        return await b.search([f"q{i}"], 3)

    async def go() -> list[list[list[Hit]]]:
        return await asyncio.gather(b.search(["first"], 3), *(late(i) for i in range(1, 6)))

    got = asyncio.run(go())
    assert r.calls == [1, 5]  # one batch at a time; the five that waited went as one
    assert got[3] == r.search(["q3"], 3)


def test_batcher_keeps_k_apart_and_fails_only_bad_callers() -> None:
    r = VectorRetriever()
    b = SearchBatcher(r, window_s=0.01)

    async def go():  # type: ignore[no-untyped-def]
        return await asyncio.gather(
            b.search(["a"], 1), b.search(["b"], 5), b.search([" "], 1), return_exceptions=True
        )

    one, five, bad = asyncio.run(go())
    assert len(one[0]) == 1 and len(five[0]) == 5
    assert isinstance(bad, InputError)
    assert sorted(r.calls) == [1, 1]
    r.fail = True

    async def both():  # type: ignore[no-untyped-def]
        return await asyncio.gather(b.search(["a"], 1), b.search(["b"], 1), return_exceptions=True)

    assert all(isinstance(e, RuntimeError) for e in asyncio.run(both()))
