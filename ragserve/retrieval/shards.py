"""Sharded retrieval: an index split by passage range into shards, searched by fan-out and merge.

Each shard holds the passages ``offset .. offset + passages - 1`` and answers with global ids.
A shard scores a passage exactly as the unsharded index does (BM25 weights are computed over the
whole corpus before the split; dense scores are the exact inner product), and every retriever
breaks ties by lower id, so merging the shards' top-k by (score, id) is the unsharded top-k.

Shards are reached through a ``ShardClient``: in this process (``LocalShards``), or as Ray Serve
deployments (``ray_shards``). Query text is prepared once in front (a dense query is encoded
here, so shards never load the encoder) and only the prepared payload travels.
"""

from __future__ import annotations

import heapq
import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ragserve.errors import InputError, RagServeError
from ragserve.retrieval.base import Hit, check_doc_ids, check_queries

log = logging.getLogger("ragserve.retrieval")

SHARD_MAP = "shards.json"
SHARDABLE = ("bm25", "dense")
FAILURE_MODES = ("error", "partial")


class ShardUnavailableError(RagServeError):
    """A shard did not answer in time (no live replica, or it died mid-request)."""

    status_code = 503
    error_type = "service_unavailable_error"


@dataclass(frozen=True)
class ShardInfo:
    folder: str  # relative to the index folder
    offset: int
    passages: int

    def holds(self, doc_id: int) -> bool:
        return self.offset <= doc_id < self.offset + self.passages


def split(n: int, shards: int) -> list[range]:
    """``shards`` contiguous passage ranges as equal as they can be."""
    if not 1 <= shards <= n:
        raise InputError(f"shards must be between 1 and the passage count ({n}), got {shards}")
    bounds = [n * i // shards for i in range(shards + 1)]
    return [range(bounds[i], bounds[i + 1]) for i in range(shards)]


def write_map(folder: Path, shards: Sequence[ShardInfo], retrievers: Sequence[str]) -> None:
    data = {"retrievers": list(retrievers), "shards": [s.__dict__ for s in shards]}
    (folder / SHARD_MAP).write_text(json.dumps(data, indent=2) + "\n")


def read_map(folder: Path) -> list[ShardInfo] | None:
    """The shard map of an index folder; ``None`` for an unsharded index."""
    path = folder / SHARD_MAP
    if not path.is_file():
        return None
    return [ShardInfo(**s) for s in json.loads(path.read_text())["shards"]]


class ShardIndex:
    """One shard's retrievers, loaded where the shard runs (this process or a Ray replica)."""

    def __init__(self, folder: Path, info: ShardInfo, retrievers: dict[str, Any]):
        self.folder = folder
        self.info = info
        self._parts = retrievers

    @classmethod
    def open(cls, folder: Path, info: ShardInfo) -> ShardIndex:
        from ragserve.corpus.manifest import Manifest
        from ragserve.retrieval.bm25 import BM25Retriever
        from ragserve.retrieval.dense import VectorSearch

        manifest = Manifest.load(folder)
        loaders = {"bm25": BM25Retriever.load, "dense": VectorSearch.load}
        parts = {r: loaders[r](folder / r, p) for r, p in manifest.retrievers.items()}
        if manifest.corpus.get("passages") != info.passages:
            raise InputError(f"shard {folder} holds {manifest.corpus.get('passages')} passages,"
                             f" the shard map says {info.passages}; rebuild the index")  # fmt: skip
        return cls(folder, info, parts)

    def _part(self, retriever: str) -> Any:
        if retriever not in self._parts:
            raise InputError(f"shard {self.folder.name} has no {retriever} retriever")
        return self._parts[retriever]

    def search(self, retriever: str, payload: Any, k: int) -> list[list[tuple[int, float]]]:
        """Top-``k`` per query as (global id, score); ``payload``: texts, or query vectors."""
        part = self._part(retriever)
        k = min(k, self.info.passages)
        off = self.info.offset
        return [[(off + h.doc_id, h.score) for h in row] for row in part.search(payload, k)]

    def score(self, retriever: str, payload: Any, doc_ids: Sequence[int]) -> list[float]:
        local = [int(i) - self.info.offset for i in doc_ids]
        return self._part(retriever).score(payload, local)


class Pending(Protocol):
    def result(self, timeout: float) -> Any: ...


class ShardClient(Protocol):
    """Calls one shard: ``method`` is ``search`` or ``score`` with ``ShardIndex``'s arguments."""

    info: ShardInfo

    def call(self, method: str, *args: Any) -> Pending: ...


class LocalShard:
    """A shard loaded in this process; calls run on a small shared pool, as remote ones would."""

    _pool: ThreadPoolExecutor | None = None
    _lock = threading.Lock()

    def __init__(self, index: ShardIndex):
        self.index = index
        self.info = index.info

    @classmethod
    def _executor(cls) -> ThreadPoolExecutor:
        with cls._lock:
            if cls._pool is None:
                cls._pool = ThreadPoolExecutor(4, thread_name_prefix="shard")
            return cls._pool

    def call(self, method: str, *args: Any) -> Pending:
        return self._executor().submit(getattr(self.index, method), *args)


def open_local(folder: Path, shards: Sequence[ShardInfo]) -> list[ShardClient]:
    return [LocalShard(ShardIndex.open(folder / s.folder, s)) for s in shards]


class ShardedRetriever:
    """The ``Retriever`` seam over shards: one batched call per shard, merged top-k.

    ``prepare`` turns query texts into the payload shards take (the texts themselves for BM25,
    encoded vectors for dense). ``on_failure="partial"`` answers from the shards that did answer
    and logs a warning; ``"error"`` (default) raises ``ShardUnavailableError`` (HTTP 503).
    """

    def __init__(
        self,
        name: str,
        shards: Sequence[ShardClient],
        prepare: Callable[[Sequence[str]], Any],
        *,
        timeout: float = 10.0,
        on_failure: str = "error",
    ):
        if on_failure not in FAILURE_MODES:
            raise InputError(f"unknown shard failure mode {on_failure!r}; use error or partial")
        self.name = name
        self.shards = list(shards)
        self._prepare = prepare
        self.timeout = timeout
        self.on_failure = on_failure
        self._size = sum(s.info.passages for s in self.shards)

    def __len__(self) -> int:
        return self._size

    def _gather(self, calls: list[tuple[ShardClient, Pending]], partial: bool) -> list[Any]:
        """Each call's result, or ``None`` where its shard failed (when ``partial``)."""
        out: list[Any] = []
        failed = []
        deadline = time.monotonic() + self.timeout  # one bound for the whole fan-out
        for shard, pending in calls:
            try:
                out.append(pending.result(max(0.0, deadline - time.monotonic())))
            except RagServeError:
                raise
            except Exception as e:  # timeout, dead replica, lost connection: the shard is down
                log.warning("shard %s of %s: %s", shard.info.folder, self.name, repr(e)[:500])
                timed_out = isinstance(e, TimeoutError)
                why = f"no answer within {self.timeout:g} s" if timed_out else type(e).__name__
                failed.append(f"{shard.info.folder}: {why}")
                out.append(None)
        if failed:
            what = f"{len(failed)} of {len(self.shards)} {self.name} shards did not answer"
            if not partial or len(failed) == len(calls):
                raise ShardUnavailableError(f"{what} ({'; '.join(failed)}); retry shortly")
            log.warning("%s; partial results without them (%s)", what, "; ".join(failed))
        return out

    def search(self, queries: Sequence[str], k: int) -> list[list[Hit]]:
        k = check_queries(queries, k, len(self))
        if not queries:
            return []
        payload = self._prepare(queries)
        calls = [(s, s.call("search", self.name, payload, k)) for s in self.shards]
        partial = self.on_failure == "partial"
        answers = [a for a in self._gather(calls, partial) if a is not None]
        merged = []
        for q in range(len(queries)):
            best = heapq.nsmallest(k, (hit for a in answers for hit in a[q]),
                                   key=lambda h: (-h[1], h[0]))  # fmt: skip
            merged.append([Hit(int(i), float(s)) for i, s in best])
        return merged

    def score(self, query: str, doc_ids: Sequence[int]) -> list[float]:
        check_queries([query], 1, len(self))
        ids = check_doc_ids(doc_ids, len(self))
        payload = self._prepare([query])
        one = payload[0] if isinstance(payload, np.ndarray) else query
        calls, where = [], []
        for s in self.shards:
            mine = [j for j, i in enumerate(ids) if s.info.holds(i)]
            if mine:
                calls.append((s, s.call("score", self.name, one, [ids[j] for j in mine])))
                where.append(mine)
        answers = self._gather(calls, partial=False)  # a missing score cannot be made up
        out = [0.0] * len(ids)
        for mine, scores in zip(where, answers, strict=True):
            for j, sc in zip(mine, scores, strict=True):
                out[j] = float(sc)
        return out


Connect = Callable[[Path, Sequence[ShardInfo]], list[ShardClient]]


@dataclass(frozen=True)
class ShardOptions:
    """How a sharded index is reached: in this process by default, or ``ray_shards.connect``."""

    connect: Connect = open_local
    timeout: float = 10.0  # seconds a shard may take before it counts as down
    on_failure: str = "error"


def _encoded(params: dict[str, Any], encoder: Any) -> Callable[[Sequence[str]], np.ndarray]:
    import functools

    from ragserve.retrieval.dense import checked_encoder

    encode = functools.lru_cache(maxsize=4096)(checked_encoder(params, encoder).encode_query)
    return lambda queries: np.stack([encode(q) for q in queries])


def load_sharded(
    folder: Path,
    shards: Sequence[ShardInfo],
    params: dict[str, dict[str, Any]],
    wanted: Sequence[str],
    options: dict[str, dict[str, Any]],
    how: ShardOptions,
) -> dict[str, ShardedRetriever]:
    """The sharded retrievers of an index folder, over one set of shard clients."""
    clients = how.connect(folder, shards)
    out = {}
    for name in wanted:
        encoder = options.get(name, {}).get("encoder")
        prepare = list if name == "bm25" else _encoded(params[name], encoder)
        out[name] = ShardedRetriever(name, clients, prepare, timeout=how.timeout,
                                     on_failure=how.on_failure)  # fmt: skip
    return out
