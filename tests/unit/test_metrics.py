import math

import pytest

from ragserve.eval.metrics import all_found_at_k, dedupe, ndcg_at_k, recall_at_k


def test_ndcg_perfect_and_reversed() -> None:
    qrels = {"a": 2, "b": 1}
    assert ndcg_at_k(["a", "b", "c"], qrels, 10) == pytest.approx(1.0)
    worse = (1 / math.log2(2) + 2 / math.log2(3)) / (2 / math.log2(2) + 1 / math.log2(3))
    assert ndcg_at_k(["b", "a"], qrels, 10) == pytest.approx(worse)
    assert ndcg_at_k(["x", "y"], qrels, 10) == 0.0
    assert ndcg_at_k(["x", "a"], qrels, 1) == 0.0


def test_recall_and_all_found() -> None:
    assert recall_at_k(["a", "x", "b"], {"a": 1, "b": 1}, 2) == 0.5
    assert all_found_at_k(["a", "x", "b"], ["a", "b"], 2) == 0.0
    assert all_found_at_k(["a", "x", "b"], ["a", "b"], 3) == 1.0


def test_dedupe_keeps_first_occurrence() -> None:
    assert dedupe(["d1", "d2", "d1", "d3"]) == ["d1", "d2", "d3"]
