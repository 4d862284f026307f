"""Hybrid retrieval: fuse the ranked lists of any retrievers.

Each member ranks its top ``depth`` passages. Two fusions:

- ``zscore`` (default): each member's scores are standardised over its own list (mean 0, std 1),
  a passage a member did not list gets that list's minimum, and members are averaged with equal
  weights. On SciFact, HotpotQA and NQ it beat RRF every time (``benchmarks/results/``); nothing
  is tuned: equal weights, depth 100.
- ``rrf``: reciprocal-rank fusion, ``sum 1 / (60 + rank)``.

``score`` fuses the same lists for the given passages, so it agrees with ``search``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ragserve.errors import InputError
from ragserve.retrieval.base import Hit, Retriever, check_doc_ids, check_queries

RRF_K = 60
DEPTH = 100
METHODS = ("zscore", "rrf")


class HybridRetriever:
    name = "hybrid"

    def __init__(self, members: Sequence[Retriever], *, method: str = "zscore", depth: int = DEPTH):
        if len(members) < 2:
            raise InputError("hybrid retrieval needs at least two retrievers")
        sizes = {len(m) for m in members}
        if len(sizes) != 1:
            raise InputError(f"hybrid members index different corpora (sizes {sorted(sizes)})")
        if method not in METHODS:
            raise InputError(f"unknown fusion {method!r}; choose from {', '.join(METHODS)}")
        self.members = list(members)
        self.method = method
        self.depth = depth

    def __len__(self) -> int:
        return len(self.members[0])

    def _member_scores(self, hits: list[Hit]) -> tuple[dict[int, float], float]:
        """Each listed passage's contribution, and the contribution of an unlisted one."""
        if self.method == "rrf":
            return {h.doc_id: 1.0 / (RRF_K + r) for r, h in enumerate(hits, start=1)}, 0.0
        s = np.array([h.score for h in hits], dtype=np.float64)
        z = (s - s.mean()) / s.std() if len(s) > 1 and s.std() > 0 else np.zeros_like(s)
        return {h.doc_id: float(v) for h, v in zip(hits, z, strict=True)}, float(z.min(initial=0))

    def _fused(self, queries: Sequence[str]) -> list[dict[int, float]]:
        depth = min(self.depth, len(self))
        per_member = [m.search(queries, depth) for m in self.members]
        fused = []
        for qi in range(len(queries)):
            parts = [self._member_scores(hits[qi]) for hits in per_member]
            union = set().union(*(p[0] for p in parts))
            fused.append({d: sum(p[0].get(d, p[1]) for p in parts) / len(parts) for d in union})
        return fused

    def search(self, queries: Sequence[str], k: int) -> list[list[Hit]]:
        k = check_queries(queries, k, len(self))
        out = []
        for scores in self._fused(queries):
            ranked = sorted(scores.items(), key=lambda x: (-x[1], x[0]))[:k]
            out.append([Hit(doc, s) for doc, s in ranked])
        return out

    def score(self, query: str, doc_ids: Sequence[int]) -> list[float]:
        """Fused scores; a passage no member listed gets the fusion of the unlisted values."""
        check_queries([query], 1, len(self))
        ids = check_doc_ids(doc_ids, len(self))
        per_member = [
            self._member_scores(m.search([query], min(self.depth, len(self)))[0])
            for m in self.members
        ]
        return [sum(p[0].get(d, p[1]) for p in per_member) / len(per_member) for d in ids]
