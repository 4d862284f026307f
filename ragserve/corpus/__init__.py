"""Storage, the ground floor: corpus loaders, chunking, the SQLite docstore and the manifest."""

from ragserve.corpus.chunking import ChunkingConfig, chunk_documents
from ragserve.corpus.docstore import DocStore
from ragserve.corpus.documents import Document, Passage
from ragserve.corpus.loaders import load_corpus
from ragserve.corpus.manifest import Manifest

__all__ = [
    "ChunkingConfig",
    "DocStore",
    "Document",
    "Manifest",
    "Passage",
    "chunk_documents",
    "load_corpus",
]
