"""Prompt pieces: never a lone token (it would take another attention kernel), at most CHUNK."""

from __future__ import annotations

import itertools

import pytest

from ragserve.generation.llama_cpp import _Seq, prompt_pieces
from ragserve.generation.llama_step import CHUNK


@pytest.mark.parametrize("start", [0, 1, 5, CHUNK - 1, CHUNK])
@pytest.mark.parametrize("end", [2, 3, CHUNK + 1, CHUNK + 2, 2 * CHUNK + 1, 300])
def test_pieces_cover_the_prompt_without_lone_tokens(start: int, end: int) -> None:
    if start >= end - 1:
        return
    pieces = prompt_pieces(start, end)
    assert pieces[0][0] == start and pieces[-1][1] == end
    assert all(a[1] == b[0] for a, b in itertools.pairwise(pieces))
    assert all(2 <= stop - begin <= CHUNK for begin, stop in pieces)


def test_a_one_token_prompt_is_one_piece() -> None:
    assert prompt_pieces(0, 1) == [(0, 1)]


def test_reuse_keeps_only_prompt_tokens_and_leaves_two() -> None:
    seq = _Seq(0)
    seq.tokens = [1, 2, 3, 4, 5, 6, 7, 8]
    seq.prompt_len = 5  # 6, 7, 8 were generated, one at a time
    assert seq.reusable([1, 2, 3, 4, 5, 6, 7, 8, 9]) == 5
    assert seq.reusable([1, 2, 3, 4]) == 2
    assert seq.reusable([1, 2, 9, 9, 9, 9]) == 2
    assert seq.reusable([9]) == 0
