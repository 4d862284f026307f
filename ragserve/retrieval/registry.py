"""Retrievers by name: how each is built into an index folder and loaded back from it.

``indexing`` and the server only know names; adding a retriever means adding one entry here.
Options carry what a retriever needs from outside the retrieval layer (the generator's tokenizer
for the FM-index, an encoder for dense), so retrieval never imports generation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ragserve.errors import InputError
from ragserve.retrieval.base import Retriever

Options = dict[str, Any]
Builder = Callable[[Path, Sequence[str], Options, bool], dict[str, Any]]
Loader = Callable[[Path, dict[str, Any], Options], Retriever]
# (one folder per shard, all texts, options, progress, each shard's passage range) -> params
ShardBuilder = Callable[[Sequence[Path], Sequence[str], Options, bool, Sequence[range]], dict]


@dataclass(frozen=True)
class RetrieverKind:
    name: str
    build: Builder
    load: Loader
    build_shards: ShardBuilder | None = None  # None: the retriever cannot be sharded


def _build_bm25(folder: Path, texts: Sequence[str], opts: Options, progress: bool) -> dict:
    from ragserve.retrieval.bm25 import BM25Retriever

    return BM25Retriever.fit(texts, show_progress=progress, **opts).save(folder)


def _load_bm25(folder: Path, params: dict[str, Any], opts: Options) -> Retriever:
    from ragserve.retrieval.bm25 import BM25Retriever

    return BM25Retriever.load(folder, params)


def _build_bm25_shards(
    folders: Sequence[Path], texts: Sequence[str], opts: Options, progress: bool,
    ranges: Sequence[range],
) -> dict:  # fmt: skip
    from ragserve.retrieval.bm25 import BM25Retriever

    full = BM25Retriever.fit(texts, show_progress=progress, **opts)
    return [part.save(f) for f, part in zip(folders, full.split(ranges), strict=True)][-1]


def _build_dense_shards(
    folders: Sequence[Path], texts: Sequence[str], opts: Options, progress: bool,
    ranges: Sequence[range],
) -> dict:  # fmt: skip
    from ragserve.retrieval.dense import DenseRetriever

    parts = DenseRetriever.fit_shards(texts, ranges, show_progress=progress, **opts)
    return [part.save(f) for f, part in zip(folders, parts, strict=True)][-1]


def _build_dense(folder: Path, texts: Sequence[str], opts: Options, progress: bool) -> dict:
    from ragserve.retrieval.dense import DenseRetriever

    return DenseRetriever.fit(texts, show_progress=progress, **opts).save(folder)


def _load_dense(folder: Path, params: dict[str, Any], opts: Options) -> Retriever:
    from ragserve.retrieval.dense import DenseRetriever

    return DenseRetriever.load(folder, params, opts.get("encoder"))


def _tokenizer(opts: Options):  # type: ignore[no-untyped-def]
    if "tokenizer" not in opts:
        raise InputError("the fmindex retriever needs the generator's tokenizer")
    return opts["tokenizer"]


def _build_fmindex(folder: Path, texts: Sequence[str], opts: Options, progress: bool) -> dict:
    from ragserve.retrieval.fmindex import FMIndexRetriever

    return FMIndexRetriever.fit(texts, _tokenizer(opts), show_progress=progress).save(folder)


def _load_fmindex(folder: Path, params: dict[str, Any], opts: Options) -> Retriever:
    from ragserve.retrieval.fmindex import FMIndexRetriever

    return FMIndexRetriever.load(folder, params, _tokenizer(opts))


KINDS: dict[str, RetrieverKind] = {
    "bm25": RetrieverKind("bm25", _build_bm25, _load_bm25, _build_bm25_shards),
    "dense": RetrieverKind("dense", _build_dense, _load_dense, _build_dense_shards),
    "fmindex": RetrieverKind("fmindex", _build_fmindex, _load_fmindex),
}
DEFAULT_RETRIEVERS: tuple[str, ...] = ("bm25", "dense", "fmindex")


def kind(name: str) -> RetrieverKind:
    if name not in KINDS:
        raise InputError(f"unknown retriever {name!r}; choose from {', '.join(sorted(KINDS))}")
    return KINDS[name]


def with_hybrid(retrievers: dict[str, Retriever]) -> dict[str, Retriever]:
    """Add ``hybrid`` (RRF of BM25 and dense) when both are loaded."""
    if "bm25" in retrievers and "dense" in retrievers:
        from ragserve.retrieval.hybrid import HybridRetriever

        return {**retrievers, "hybrid": HybridRetriever([retrievers["bm25"], retrievers["dense"]])}
    return retrievers


def fuse(retrievers: dict[str, Retriever], name: str) -> Retriever | None:
    """``a+b+c``: the z-score fusion of loaded retrievers ``a``, ``b`` and ``c``; ``None`` when
    ``name`` does not name two or more distinct loaded ones."""
    parts = name.split("+")
    if len(parts) < 2 or len(set(parts)) < len(parts) or any(p not in retrievers for p in parts):
        return None
    from ragserve.retrieval.hybrid import HybridRetriever

    return HybridRetriever([retrievers[p] for p in parts])
