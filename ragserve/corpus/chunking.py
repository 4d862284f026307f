"""Chunk documents into ~N-word passages with overlap, so long documents stay retrievable.

Word windows (not tokens) keep chunking independent of any model; the overlap keeps a sentence
that straddles a boundary whole in at least one passage.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from ragserve.corpus.documents import Document, Passage
from ragserve.errors import InputError


@dataclass(frozen=True)
class ChunkingConfig:
    """``max_words=0`` keeps documents whole (the BEIR convention for evaluation)."""

    max_words: int = 100
    overlap: int = 20

    def __post_init__(self) -> None:
        if self.max_words < 0 or self.overlap < 0:
            raise InputError("chunk size and overlap must be non-negative")
        if self.max_words and self.overlap >= self.max_words:
            raise InputError(
                f"chunk overlap ({self.overlap}) must be smaller than chunk size ({self.max_words})"
            )


def split_words(text: str, cfg: ChunkingConfig) -> list[str]:
    """Split ``text`` into overlapping windows; a short tail is merged into the previous window."""
    words = text.split()
    if not cfg.max_words or len(words) <= cfg.max_words:
        return [" ".join(words)]
    step = cfg.max_words - cfg.overlap
    chunks: list[str] = []
    start = 0
    while True:
        end = start + cfg.max_words
        rest = len(words) - end
        if 0 < rest <= cfg.overlap:
            end = len(words)
        chunks.append(" ".join(words[start:end]))
        if end >= len(words):
            return chunks
        start += step


def chunk_documents(docs: Iterable[Document], cfg: ChunkingConfig) -> Iterator[Passage]:
    """Number passages densely from 0 in corpus order: ids are positions in every index."""
    pid = 0
    for doc in docs:
        pieces = split_words(doc.text, cfg)
        for i, piece in enumerate(pieces):
            external = doc.id if len(pieces) == 1 else f"{doc.id}#{i}"
            yield Passage(id=pid, external_id=external, doc_id=doc.id, title=doc.title, text=piece)
            pid += 1
