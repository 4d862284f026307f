import numpy as np
import pytest

from ragserve.errors import ContextLengthError, InputError
from ragserve.generation.base import SamplingParams, completion_budget
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


def test_negative_seed_is_a_64_bit_seed_and_out_of_range_is_refused() -> None:
    logits = np.random.default_rng(1).normal(size=50)
    draws = [Sampler(SamplingParams(temperature=1.0, seed=-1))(logits) for _ in range(5)]
    assert len(set(draws)) == 1  # reproducible
    with pytest.raises(InputError, match="64-bit") as err:
        SamplingParams(seed=2**63)
    assert err.value.param == "seed"


def test_tiny_temperature_is_greedy_and_sampling_never_sees_nan() -> None:
    logits = np.random.default_rng(2).normal(size=50).astype(np.float32)
    assert SamplingParams(temperature=1e-308).greedy
    assert Sampler(SamplingParams(temperature=1e-308, seed=0))(logits) == int(np.argmax(logits))
    hot = SamplingParams(temperature=2e-5, seed=0)  # just above the greedy bound
    assert Sampler(hot)(logits * 1e4) == int(np.argmax(logits))


def test_completion_budget_fits_defaults_and_refuses_explicit_overflow() -> None:
    assert completion_budget(SamplingParams(max_tokens=256), 2000, 2048) == 48
    assert completion_budget(SamplingParams(max_tokens=40, fit_context=False), 2000, 2048) == 40
    with pytest.raises(InputError, match="leaves 48 of the model's 2048") as err:
        completion_budget(SamplingParams(max_tokens=49, fit_context=False), 2000, 2048)
    assert err.value.param == "max_tokens"
    with pytest.raises(ContextLengthError):
        completion_budget(SamplingParams(), 2048, 2048)
