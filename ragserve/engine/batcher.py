"""Cross-request batching of retriever calls: searches that arrive within a short window go to the
retriever as one batched ``search`` (one matrix product for dense, one pass for BM25).

Speculative requests verify several queries at once; many concurrent requests verifying at the
same moment then cost about one search, not one each. One batch runs at a time: what arrives
while it runs waits and goes next, all together, as continuous batching does for generation (on
a few cores, searches side by side only slow each other down). Calls with different ``k`` are
batched separately, since an approximate index may rank its top hits differently when asked for
more.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

from ragserve.retrieval.base import Hit, Retriever, check_queries


@dataclass
class BatchStats:
    calls: int = 0  # batched retriever calls made
    queries: int = 0
    requests: int = 0  # search() calls answered
    widths: list[int] = field(default_factory=list)


class SearchBatcher:
    """``await batcher.search(queries, k)`` as ``retriever.search``, batched across callers."""

    def __init__(self, retriever: Retriever, window_s: float = 0.002, max_queries: int = 256):
        self.retriever = retriever
        self.window_s = window_s
        self.max_queries = max_queries
        self.stats = BatchStats()
        self._queue: list[tuple[list[str], int, asyncio.Future[list[list[Hit]]]]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop the timer runs on
        self._tasks: set[asyncio.Future[None]] = set()
        self._busy = False  # a batch is running: arrivals wait for its end

    async def search(self, queries: Sequence[str], k: int) -> list[list[Hit]]:
        # A bad query fails its own caller here, not the batch it would have joined.
        check_queries(queries, k, len(self.retriever))
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # a new event loop: whatever the old one queued is dead
            self._queue, self._timer, self._loop, self._busy = [], None, loop, False
        future: asyncio.Future[list[list[Hit]]] = loop.create_future()
        self._queue.append((list(queries), k, future))
        if self._timer is None:
            self._timer = loop.call_later(self.window_s, self._flush)
        if sum(len(q) for q, _, _ in self._queue) >= self.max_queries:
            self._flush()
        return await future

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None
        if self._busy:
            return  # the running batch's end sends what is queued
        queue, self._queue = self._queue, []
        live = [item for item in queue if not item[2].done()]
        if not live:
            return
        self._busy = True
        task = asyncio.ensure_future(self._run_all(live))
        self._tasks.add(task)  # held until done: the loop keeps only weak references
        task.add_done_callback(self._tasks.discard)

    async def _run_all(
        self, live: list[tuple[list[str], int, asyncio.Future[list[list[Hit]]]]]
    ) -> None:
        try:
            for k in sorted({k for _, k, _ in live}):
                await self._run([item for item in live if item[1] == k], k)
        finally:
            self._busy = False
            if self._queue:
                self._flush()

    async def _run(
        self, group: list[tuple[list[str], int, asyncio.Future[list[list[Hit]]]]], k: int
    ) -> None:
        queries = [q for qs, _, _ in group for q in qs]
        self.stats.calls += 1
        self.stats.queries += len(queries)
        self.stats.requests += len(group)
        self.stats.widths.append(len(queries))
        try:
            hits = await asyncio.to_thread(self.retriever.search, queries, k)
        except Exception as e:  # every caller in the batch hears of it
            for _, _, future in group:
                if not future.done():
                    future.set_exception(e)
            return
        start = 0
        for qs, _, future in group:
            if not future.done():
                future.set_result(hits[start : start + len(qs)])
            start += len(qs)
