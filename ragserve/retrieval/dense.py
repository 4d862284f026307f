"""Dense retrieval: passage vectors in a faiss index named by a factory string.

``Flat`` is exact inner product, ``HNSW32`` approximate, ``IVF…,PQ…`` for large corpora. The
vectors are stored beside the index, so another factory string can be built without re-encoding,
and ``score`` is always the exact inner product, which the approximate indexes approximate: search
takes faiss's candidates and ranks them by that same exact function.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ragserve.errors import InputError
from ragserve.retrieval.base import Hit, check_doc_ids, check_identity, check_queries
from ragserve.retrieval.encoders import Encoder, load_encoder

DEFAULT_FACTORY = "Flat"
EF_SEARCH = 128
NPROBE = 16


def make_faiss_index(vectors: np.ndarray, factory: str):  # type: ignore[no-untyped-def]
    import faiss

    try:
        index = faiss.index_factory(vectors.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        raise InputError(f"invalid faiss factory string {factory!r}: {e}") from None
    if not index.is_trained:
        index.train(vectors)
    index.add(vectors)
    return index


def _tune(index, factory: str) -> None:  # type: ignore[no-untyped-def]
    import faiss

    if "HNSW" in factory:
        faiss.ParameterSpace().set_index_parameter(index, "efSearch", EF_SEARCH)
    if "IVF" in factory:
        faiss.ParameterSpace().set_index_parameter(index, "nprobe", NPROBE)


class VectorSearch:
    """The encoder-free half of dense retrieval: a faiss index over stored vectors, ranked by
    the exact inner product. A shard runs only this; whoever holds the encoder sends vectors."""

    def __init__(self, index, vectors: np.ndarray, factory: str):  # type: ignore[no-untyped-def]
        self.index = index
        self.vectors = vectors
        self.factory = factory
        self._exact = factory == "Flat"
        _tune(index, factory)

    def __len__(self) -> int:
        return len(self.vectors)

    @classmethod
    def load(cls, folder: Path, params: dict[str, Any]) -> VectorSearch:
        import faiss

        vectors = np.load(folder / "vectors.npy", mmap_mode="r")
        return cls(faiss.read_index(str(folder / "index.faiss")), vectors, params["factory"])

    def scores(self, qvec: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """float64 row-wise products: the same value for a pair whatever else is scored with it."""
        return (self.vectors[ids].astype(np.float64) * qvec.astype(np.float64)).sum(axis=1)

    def score(self, qvec: np.ndarray, doc_ids: Sequence[int]) -> list[float]:
        return [float(x) for x in self.scores(qvec, np.asarray(doc_ids, dtype=np.int64))]

    def search(self, qvecs: np.ndarray, k: int) -> list[list[Hit]]:
        # Exact search fetches a few extra so float32 near-ties cannot hide a true top-k passage.
        fetch = min(len(self), k + 8 if self._exact else k)
        _, cand = self.index.search(qvecs, fetch)
        out = []
        for qvec, row in zip(qvecs, cand, strict=True):
            ids = row[row >= 0]
            scores = self.scores(qvec, ids)
            order = np.lexsort((ids, -scores))[:k]
            out.append([Hit(int(ids[i]), float(scores[i])) for i in order])
        return out


class DenseRetriever:
    """Thread-safe: faiss searches and ONNX Runtime sessions may run concurrently."""

    name = "dense"

    def __init__(self, vectors: VectorSearch, encoder: Encoder):
        self._search = vectors
        self._encoder = encoder
        # Speculation encodes a query to rank its cache, then again to verify it: once is enough.
        # The one cache of encoded queries, whatever the encoder.
        self.encode_query = functools.lru_cache(maxsize=4096)(encoder.encode_query)
        self.factory = vectors.factory

    def __len__(self) -> int:
        return len(self._search)

    def clear_query_cache(self) -> None:
        """Forget encoded queries, so that a benchmark run pays for encoding as a new one would."""
        self.encode_query.cache_clear()

    @classmethod
    def fit(
        cls,
        texts: Sequence[str],
        *,
        factory: str = DEFAULT_FACTORY,
        encoder: Encoder | None = None,
        precision: str | None = None,
        batch_size: int = 16,
        show_progress: bool = False,
    ) -> DenseRetriever:
        encoder = encoder or load_encoder(precision)
        vectors = encoder.encode(texts, batch_size=batch_size, progress=show_progress)
        return cls(VectorSearch(make_faiss_index(vectors, factory), vectors, factory), encoder)

    def save(self, folder: Path) -> dict[str, Any]:
        import faiss

        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / "vectors.npy", self._search.vectors)
        faiss.write_index(self._search.index, str(folder / "index.faiss"))
        return {
            **self._encoder.identity(),
            "factory": self.factory,
            "metric": "inner_product",
            "ef_search": EF_SEARCH,
            "nprobe": NPROBE,
        }

    @classmethod
    def load(
        cls, folder: Path, params: dict[str, Any], encoder: Encoder | None = None
    ) -> DenseRetriever:
        return cls(VectorSearch.load(folder, params), checked_encoder(params, encoder))

    def with_factory(self, factory: str) -> DenseRetriever:
        """The same vectors under another faiss index (no re-encoding)."""
        vectors = np.ascontiguousarray(self._search.vectors, dtype=np.float32)
        return DenseRetriever(
            VectorSearch(make_faiss_index(vectors, factory), vectors, factory), self._encoder
        )

    @classmethod
    def fit_shards(
        cls,
        texts: Sequence[str],
        ranges: Sequence[range],
        *,
        factory: str = DEFAULT_FACTORY,
        encoder: Encoder | None = None,
        precision: str | None = None,
        batch_size: int = 16,
        show_progress: bool = False,
    ) -> list[DenseRetriever]:
        """Shards by passage range, each its own ``factory`` index over its slice of vectors:
        the corpus is encoded once and never indexed whole."""
        encoder = encoder or load_encoder(precision)
        vectors = encoder.encode(texts, batch_size=batch_size, progress=show_progress)
        out = []
        for r in ranges:
            part = np.ascontiguousarray(vectors[r.start : r.stop])
            out.append(cls(VectorSearch(make_faiss_index(part, factory), part, factory), encoder))
        return out

    def search(self, queries: Sequence[str], k: int) -> list[list[Hit]]:
        k = check_queries(queries, k, len(self))
        if not queries:
            return []
        return self._search.search(np.stack([self.encode_query(q) for q in queries]), k)

    def score(self, query: str, doc_ids: Sequence[int]) -> list[float]:
        check_queries([query], 1, len(self))
        return self._search.score(self.encode_query(query), check_doc_ids(doc_ids, len(self)))


def checked_encoder(params: dict[str, Any], encoder: Encoder | None = None) -> Encoder:
    """The encoder an index was built with (loaded when not given), refusing another one."""
    encoder = encoder or load_encoder(params.get("precision"))
    check_identity(
        "dense index encoder",
        params,
        encoder.identity(),
        ("encoder", "precision", "dim"),
        "rebuild the index or load that encoder",
    )
    return encoder
