"""Retrievers by name: how each is built into an index folder and loaded back from it.

``indexing`` and the server only know names; adding a retriever means adding one entry here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ragserve.errors import InputError
from ragserve.retrieval.base import Retriever

Builder = Callable[[Path, Sequence[str], dict[str, Any], bool], dict[str, Any]]
Loader = Callable[[Path, dict[str, Any]], Retriever]


@dataclass(frozen=True)
class RetrieverKind:
    name: str
    build: Builder
    load: Loader


def _build_bm25(folder: Path, texts: Sequence[str], opts: dict[str, Any], progress: bool) -> dict:
    from ragserve.retrieval.bm25 import BM25Retriever

    return BM25Retriever.fit(texts, show_progress=progress, **opts).save(folder)


def _load_bm25(folder: Path, params: dict[str, Any]) -> Retriever:
    from ragserve.retrieval.bm25 import BM25Retriever

    return BM25Retriever.load(folder, params)


KINDS: dict[str, RetrieverKind] = {
    "bm25": RetrieverKind("bm25", _build_bm25, _load_bm25),
}
DEFAULT_RETRIEVERS: tuple[str, ...] = ("bm25",)


def kind(name: str) -> RetrieverKind:
    if name not in KINDS:
        raise InputError(f"unknown retriever {name!r}; choose from {', '.join(sorted(KINDS))}")
    return KINDS[name]
