"""The ``Retriever`` seam: batched search, and scoring of given passages by the same function.

``score`` must agree with ``search`` exactly: the speculation cache ranks cached passages with it
and promises the ranking the full search would give.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple, Protocol, runtime_checkable

import numpy as np

from ragserve.errors import IndexMismatchError, InputError


class Hit(NamedTuple):
    """A passage id and its score; text comes from the docstore, never from a retriever."""

    doc_id: int
    score: float


@runtime_checkable
class Retriever(Protocol):
    """Thread-safe: the engine runs searches in worker threads while the model generates."""

    name: str

    def __len__(self) -> int: ...

    def search(self, queries: Sequence[str], k: int) -> list[list[Hit]]:
        """Top-``k`` hits per query, best first; ties broken by lower passage id."""
        ...

    def score(self, query: str, doc_ids: Sequence[int]) -> list[float]:
        """The scores ``search`` would give these passages for ``query``."""
        ...


def check_queries(queries: Sequence[str], k: int, size: int) -> int:
    """Validate a search call and return ``k`` clipped to the corpus size."""
    if isinstance(queries, str):
        raise InputError("queries must be a list of strings, not one string")
    for q in queries:
        if not isinstance(q, str) or not q.strip():
            raise InputError("empty query", param="query")
    if not isinstance(k, int) or k <= 0:
        raise InputError(f"k must be a positive integer, got {k!r}", param="k")
    return min(k, size)


def check_identity(
    what: str, built: dict[str, Any], loaded: dict[str, Any], keys: Sequence[str], fix: str
) -> None:
    """Refuse an index built with another encoder or tokenizer, naming both."""
    b = {k: built.get(k) for k in keys}
    got = {k: loaded.get(k) for k in keys}
    if b != got:
        raise IndexMismatchError(f"{what} was built with {b} but the loaded one is {got}; {fix}")


def check_doc_ids(doc_ids: Sequence[int], size: int) -> list[int]:
    """Validate passage ids given to ``score``."""
    ids = [int(i) for i in doc_ids]
    bad = [i for i in ids if not 0 <= i < size]
    if bad:
        raise InputError(f"unknown passage ids {bad[:5]} (index has {size} passages)")
    return ids


def top_k(scores: Sequence[float], k: int) -> list[Hit]:
    """Best ``k`` of a full score vector, ties broken by lower id, as every retriever orders."""
    arr = np.asarray(scores)
    k = min(k, len(arr))
    if k < len(arr):
        part = np.argpartition(-arr, k - 1)[:k]
        # Include every id tied with the k-th score so the tie-break by id is exact.
        kth = arr[part].min()
        cand = np.flatnonzero(arr >= kth)
    else:
        cand = np.arange(len(arr))
    order = np.lexsort((cand, -arr[cand]))[:k]
    return [Hit(int(cand[i]), float(arr[cand[i]])) for i in order]
