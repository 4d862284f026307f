"""The Auto-RAG protocol's reading of a model turn, on hand-written and adversarial text."""

from __future__ import annotations

import random

import pytest

from ragserve.engine.auto_rag import QUERY_WORDS, Turn, parse_turn


@pytest.mark.parametrize(
    ("text", "turn"),
    [
        ("Analysis: two hops.\nInitial Query: who built it\n", Turn("who built it", None)),
        ("Refined Query: a\nmore\nRefined Query: b  \n", Turn("b", None)),  # the last one wins
        ("Intermediate Answer: x.\nFinal Answer: Paris\nQuestion: next", Turn(None, "Paris")),
        ("Query: q\nFinal Answer: no", Turn("q", None)),  # a query beats an answer
        ("Refined Query:   \n", Turn(None, None)),  # empty: the previous query again
        ("Refined Query:\nFinal Answer: 3", Turn(None, None)),
        ("", Turn(None, None)),
        ("just thinking aloud", Turn(None, None)),
        ("Final Answer:", Turn(None, "")),
    ],
)
def test_turns(text: str, turn: Turn) -> None:
    assert parse_turn(text) == turn


def test_a_copied_document_as_query_is_cut_to_a_line() -> None:
    turn = parse_turn("Refined Query: " + "word " * 500)
    assert turn.query is not None and len(turn.query.split()) == QUERY_WORDS


@pytest.mark.parametrize("seed", range(300))
def test_any_text_parses_to_one_reading(seed: int) -> None:
    rng = random.Random(seed)
    parts = ["Query:", "Final Answer:", "Initial ", "Refined ", "\n", " ", "x", "é", "Question:",
             "Retrieved Document_1:", ":", "\t", "\x00"]  # fmt: skip
    text = "".join(rng.choice(parts) for _ in range(rng.randint(0, 10_000 if seed < 3 else 200)))
    turn = parse_turn(text)
    assert turn.query is None or turn.answer is None
    if turn.query is not None:
        assert turn.query and "\n" not in turn.query and "Query:" in text
    if turn.answer is not None:
        assert "\n" not in turn.answer and "Final Answer:" in text
