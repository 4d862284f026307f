"""The BM25 hot loop, compiled: add each query term's postings, then keep the best k.

One pass per query over its postings and one over the passages, without temporaries; numpy
versions of the same (sparse matmul, ``bincount``) spent most of their time allocating.
Ties break by lower passage id, as everywhere in retrieval. ``nogil`` lets callers use threads.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def accumulate(indptr, indices, data, terms, out):  # type: ignore[no-untyped-def]
    """``out[d] += weight(t, d)`` for every query term ``t`` (repeats count again), in order."""
    for t in terms:
        for p in range(indptr[t], indptr[t + 1]):
            out[indices[p]] += data[p]


@numba.njit(cache=True, nogil=True)
def accumulate_ids(indptr, indices, data, terms, ids, out):  # type: ignore[no-untyped-def]
    """``accumulate`` for the passages ``ids`` only: the same additions in the same order, so
    the same scores, at the cost of a binary search per term and passage instead of a pass over
    every posting (rows' passage ids are sorted)."""
    for t in terms:
        lo, hi = indptr[t], indptr[t + 1]
        for j in range(len(ids)):
            p = lo + np.searchsorted(indices[lo:hi], ids[j])
            if p < hi and indices[p] == ids[j]:
                out[j] += data[p]


@numba.njit(cache=True, nogil=True, inline="always")
def _worse(s1, d1, s2, d2):  # type: ignore[no-untyped-def]
    return s1 < s2 or (s1 == s2 and d1 > d2)


@numba.njit(cache=True, nogil=True)
def _sift_down(hs, hd, i, n):  # type: ignore[no-untyped-def]
    while True:
        worst, left, right = i, 2 * i + 1, 2 * i + 2
        if left < n and _worse(hs[left], hd[left], hs[worst], hd[worst]):
            worst = left
        if right < n and _worse(hs[right], hd[right], hs[worst], hd[worst]):
            worst = right
        if worst == i:
            return
        hs[i], hs[worst] = hs[worst], hs[i]
        hd[i], hd[worst] = hd[worst], hd[i]
        i = worst


@numba.njit(cache=True, nogil=True)
def select_top(scores, k, ids_out, scores_out):  # type: ignore[no-untyped-def]
    """Best ``k`` of ``scores`` into the outputs, best first; a min-heap keeps the worst on top."""
    hs = np.empty(k, dtype=np.float64)
    hd = np.empty(k, dtype=np.int64)
    for d in range(k):  # the first k passages, heapified
        hs[d] = scores[d]
        hd[d] = d
    for i in range(k // 2 - 1, -1, -1):
        _sift_down(hs, hd, i, k)
    for d in range(k, len(scores)):
        s = scores[d]
        if s > hs[0]:  # equal loses: d is a higher id than everything already in the heap
            hs[0] = s
            hd[0] = d
            _sift_down(hs, hd, 0, k)
    for n in range(k - 1, -1, -1):  # pop worst-first into the tail: output is best-first
        scores_out[n] = hs[0]
        ids_out[n] = hd[0]
        hs[0] = hs[n]
        hd[0] = hd[n]
        _sift_down(hs, hd, 0, n)


@numba.njit(cache=True, nogil=True)
def search_rows(indptr, indices, data, term_ptr, terms, n_docs, k, ids_out, scores_out):  # type: ignore[no-untyped-def]
    """Top-``k`` passages per query; query q has terms ``terms[term_ptr[q]:term_ptr[q + 1]]``."""
    scores = np.zeros(n_docs, dtype=np.float64)
    for q in range(len(term_ptr) - 1):
        scores[:] = 0.0
        accumulate(indptr, indices, data, terms[term_ptr[q] : term_ptr[q + 1]], scores)
        select_top(scores, k, ids_out[q], scores_out[q])
