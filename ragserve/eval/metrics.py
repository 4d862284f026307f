"""Retrieval metrics as BEIR computes them (trec_eval's ``ndcg_cut`` and ``recall``)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence


def ndcg_at_k(ranked: Sequence[str], qrels: Mapping[str, int], k: int) -> float:
    """nDCG@k with linear gains; ``ranked`` holds document ids, best first, without repeats."""
    dcg = sum(qrels.get(doc, 0) / math.log2(rank + 2) for rank, doc in enumerate(ranked[:k]))
    ideal = sorted((g for g in qrels.values() if g > 0), reverse=True)[:k]
    idcg = sum(g / math.log2(rank + 2) for rank, g in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def recall_at_k(ranked: Sequence[str], relevant: Mapping[str, int], k: int) -> float:
    """Fraction of the relevant documents found in the top ``k``."""
    rel = {d for d, g in relevant.items() if g > 0}
    if not rel:
        return 0.0
    return len(rel.intersection(ranked[:k])) / len(rel)


def all_found_at_k(ranked: Sequence[str], relevant: Sequence[str], k: int) -> float:
    """1.0 when every relevant document is in the top ``k`` (HotpotQA's both-hops recall)."""
    return float(set(relevant) <= set(ranked[:k]))


def dedupe(ids: Sequence[str]) -> list[str]:
    """First occurrence of each document id: passages of one document count once."""
    seen: set[str] = set()
    out = []
    for d in ids:
        if d not in seen:
            seen.add(d)
            out.append(d)
    return out
