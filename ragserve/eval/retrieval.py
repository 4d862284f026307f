"""Retrieval evaluation: run every query through each retriever and compute BEIR-style metrics.

Passages map back to their source documents (first occurrence wins), so chunked and whole-document
indexes are scored the same way.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from ragserve.eval.datasets import Dataset
from ragserve.eval.metrics import all_found_at_k, dedupe, ndcg_at_k, recall_at_k
from ragserve.retrieval.base import Hit, Retriever

DEPTH = 100


def ranked_docs(hits: Sequence[Hit], doc_of: Sequence[str]) -> list[str]:
    return dedupe([doc_of[h.doc_id] for h in hits])


def timed_search(retriever: Retriever, queries: Sequence[str], k: int) -> tuple[list, float]:
    """All queries in one batched call; returns hits and queries per second."""
    start = time.perf_counter()
    hits = retriever.search(queries, k)
    return hits, len(queries) / (time.perf_counter() - start)


def metrics_for(dataset: Dataset, runs: Sequence[list[str]]) -> dict[str, float]:
    """Mean metrics over queries; ``runs`` holds each query's ranked document ids."""
    n = len(dataset.queries)
    rel = [dataset.relevant[qid] for qid, _ in dataset.queries]
    out: dict[str, float] = {}
    if dataset.kind == "beir":
        out["ndcg@10"] = sum(ndcg_at_k(r, g, 10) for r, g in zip(runs, rel, strict=True)) / n
        for k in (10, 100):
            out[f"recall@{k}"] = (
                sum(recall_at_k(r, g, k) for r, g in zip(runs, rel, strict=True)) / n
            )
    else:
        for k in (2, 5, 10, 20):
            out[f"recall@{k}"] = (
                sum(recall_at_k(r, g, k) for r, g in zip(runs, rel, strict=True)) / n
            )
            out[f"all_found@{k}"] = (
                sum(all_found_at_k(r, list(g), k) for r, g in zip(runs, rel, strict=True)) / n
            )
    return {k: round(v, 4) for k, v in out.items()}


def evaluate(
    dataset: Dataset, retrievers: Mapping[str, Retriever], doc_of: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """Metrics and queries/s per retriever."""
    texts = [t for _, t in dataset.queries]
    results = {}
    for name, retriever in retrievers.items():
        retriever.search(texts[:1], DEPTH)  # warm up (compiled kernels, caches) before timing
        hits, qps = timed_search(retriever, texts, DEPTH)
        runs = [ranked_docs(h, doc_of) for h in hits]
        results[name] = {**metrics_for(dataset, runs), "qps": round(qps, 1)}
    return results
