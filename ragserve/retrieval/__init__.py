"""Retrieval, which passages: dense (faiss), BM25, FM-index and hybrid behind one batched seam."""

from ragserve.retrieval.base import Hit, Retriever

__all__ = ["Hit", "Retriever"]
