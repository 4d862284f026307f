"""Next-token choice from logits: argmax when greedy (deterministic), else seeded top-k/top-p.

Kept in numpy and outside any backend so greedy means exactly the same thing everywhere.
"""

from __future__ import annotations

import numpy as np

from ragserve.generation.base import SamplingParams, TopToken


def log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    x = x - x.max()
    return x - np.log(np.exp(x).sum())


def top_tokens(logits: np.ndarray, m: int) -> list[TopToken]:
    """The ``m`` most likely tokens with log-probabilities, ties broken by lower id."""
    lp = log_softmax(logits)
    m = min(m, len(lp))
    part = np.argpartition(-lp, m - 1)[:m]
    order = part[np.lexsort((part, -lp[part]))]
    return [TopToken(int(t), float(lp[t])) for t in order]


class Sampler:
    """One per request, so a seed gives the same sample sequence whatever else runs."""

    def __init__(self, params: SamplingParams):
        self.params = params
        # Any 64-bit seed (OpenAI takes negative ones); numpy wants it non-negative.
        seed = None if params.seed is None else params.seed % 2**64
        self._rng = np.random.default_rng(seed)

    def __call__(self, logits: np.ndarray) -> int:
        p = self.params
        if p.greedy:
            return int(np.argmax(logits))
        x = logits.astype(np.float64) / p.temperature
        if p.top_k:
            k = min(p.top_k, len(x))
            cutoff = np.partition(x, -k)[-k]
            x = np.where(x >= cutoff, x, -np.inf)
        top = x.max()
        if not np.isfinite(top):
            return int(np.argmax(logits))
        probs = np.exp(x - top)
        probs /= probs.sum()
        if p.top_p < 1.0:
            order = np.argsort(-probs, kind="stable")
            cum = np.cumsum(probs[order])
            keep = order[: int(np.searchsorted(cum, p.top_p)) + 1]
            mask = np.zeros_like(probs)
            mask[keep] = probs[keep]
            probs = mask / mask.sum()
        return int(self._rng.choice(len(probs), p=probs))
