"""Prompt pieces of several requests in shared calls: equal shares, never a lone token."""

from __future__ import annotations

import itertools
import random

import pytest

from ragserve.generation.llama_step import CHUNK, prompt_calls, seq_runs


def check(lengths: list[int]) -> list[list[tuple[int, int, int]]]:
    calls = prompt_calls(lengths)
    covered: dict[int, list[tuple[int, int]]] = {k: [] for k in range(len(lengths))}
    for call in calls:
        assert call, "an empty call"
        shares = {stop - start for _, start, stop in call}
        assert len(shares) == 1 and min(shares) >= 2  # equal shares, two tokens or more
        assert len({k for k, _, _ in call}) == len(call)  # one share per prompt a call
        for k, start, stop in call:
            covered[k].append((start, stop))
    for k, n in enumerate(lengths):
        spans = covered[k]
        assert spans[0][0] == 0 and spans[-1][1] == n  # in order, nothing missed or twice
        assert all(a[1] == b[0] for a, b in itertools.pairwise(spans))
    return calls


def test_equal_prompts_share_one_call() -> None:
    assert check([9] * 7) == [[(k, 0, 9) for k in range(7)]]


@pytest.mark.parametrize(
    "lengths", [[2, 3], [3, 2], [9, 5, 6], [2, 3, 4, 5], [CHUNK], [CHUNK - 1, 2], [5, 5, 6]]
)
def test_uneven_prompts_never_leave_a_token_alone(lengths: list[int]) -> None:
    check(lengths)


def test_random_prompt_mixes() -> None:
    rng = random.Random(11)
    for _ in range(2000):
        n = rng.randint(1, 8)
        lengths = [rng.randint(2, CHUNK) for _ in range(n)]
        calls = check(lengths)
        assert len(calls) <= n  # every call ends the shortest prompts left


def test_runs_of_consecutive_sequence_ids() -> None:
    assert seq_runs([0, 1, 2, 4, 5, 7]) == [[0, 1, 2], [3, 4], [5]]
    assert seq_runs([3]) == [[0]]
    assert seq_runs([]) == []
