import numpy as np

from ragserve.generation.base import SamplingParams
from ragserve.generation.sampling import Sampler, top_tokens


def test_greedy_is_argmax_with_lowest_id_on_ties() -> None:
    logits = np.array([0.1, 3.0, 3.0, -1.0], dtype=np.float32)
    assert Sampler(SamplingParams())(logits) == 1
    assert [t.token_id for t in top_tokens(logits, 3)] == [1, 2, 0]


def test_seeded_sampling_is_reproducible_and_respects_top_k() -> None:
    logits = np.random.default_rng(0).normal(size=50).astype(np.float32)
    p = SamplingParams(temperature=1.0, top_k=3, seed=42)
    a = [Sampler(p)(logits) for _ in range(20)]
    assert a == [Sampler(p)(logits) for _ in range(20)]
    draws = Sampler(p)
    allowed = set(np.argsort(-logits)[:3].tolist())
    assert {draws(logits) for _ in range(200)} <= allowed


def test_top_tokens_logprobs_are_normalised() -> None:
    logits = np.array([1.0, 2.0, 3.0])
    top = top_tokens(logits, 3)
    assert abs(sum(np.exp(t.logprob) for t in top) - 1.0) < 1e-9
