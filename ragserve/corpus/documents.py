"""The two records storage knows: a source document and a retrievable passage of it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Document:
    """One record of a corpus file, before chunking."""

    id: str
    title: str
    text: str


@dataclass(frozen=True, slots=True)
class Passage:
    """A chunk of a document: the unit retrievers index and prompts cite.

    ``id`` is the dense integer every retriever uses; ``external_id`` is stable across rebuilds
    (``doc`` or ``doc#n``) and ``doc_id`` names the source document, which evaluation needs.
    """

    id: int
    external_id: str
    doc_id: str
    title: str
    text: str

    @property
    def full_text(self) -> str:
        """Title and text together, as retrievers index them."""
        return f"{self.title}\n{self.text}" if self.title else self.text
