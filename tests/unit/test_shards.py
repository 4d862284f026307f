"""The fan-out and merge of sharded retrieval, over scripted shard clients (control flow only;
``tests/integration/test_shards.py`` runs real shards in-process and on Ray Serve)."""

from __future__ import annotations

import logging
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

import pytest

from ragserve.errors import InputError
from ragserve.retrieval.base import Hit
from ragserve.retrieval.shards import ShardedRetriever, ShardInfo, ShardUnavailableError, split


class Answer:
    def __init__(self, value: Any = None, error: Exception | None = None):
        self.value, self.error = value, error

    def result(self, timeout: float) -> Any:
        if self.error is not None:
            raise self.error
        return self.value


class Scripted:
    """A shard holding ``scores`` (global id -> score) for every query; or down."""

    def __init__(self, info: ShardInfo, scores: dict[int, float], down: Exception | None = None):
        self.info, self.scores, self.down = info, scores, down

    def call(self, method: str, retriever: str, payload: Any, arg: Any) -> Answer:
        if self.down is not None:
            return Answer(error=self.down)
        ranked = sorted(self.scores.items(), key=lambda x: (-x[1], x[0]))
        if method == "search":
            return Answer([ranked[:arg] for _ in payload])
        return Answer([self.scores[i] for i in arg])


def shards(down: Exception | None = None) -> list[Scripted]:
    return [
        Scripted(ShardInfo("shard-00", 0, 3), {0: 1.0, 1: 3.0, 2: 2.0}),
        Scripted(ShardInfo("shard-01", 3, 3), {3: 3.0, 4: 0.5, 5: 2.5}, down),
        Scripted(ShardInfo("shard-02", 6, 2), {6: 2.0, 7: 4.0}),
    ]


def test_split_covers_every_passage_once() -> None:
    assert split(8, 3) == [range(0, 2), range(2, 5), range(5, 8)]
    assert [len(r) for r in split(10, 4)] == [2, 3, 2, 3]
    with pytest.raises(InputError):
        split(2, 3)


def test_merge_orders_by_score_then_lower_id() -> None:
    r = ShardedRetriever("bm25", shards(), list)
    assert len(r) == 8
    assert r.search(["q"], 4) == [[Hit(7, 4.0), Hit(1, 3.0), Hit(3, 3.0), Hit(5, 2.5)]]
    assert r.score("q", [5, 0, 7]) == [2.5, 1.0, 4.0]


def test_a_down_shard_is_a_503_naming_it() -> None:
    r = ShardedRetriever("bm25", shards(FutureTimeout()), list)
    with pytest.raises(ShardUnavailableError, match=r"1 of 3 bm25 shards.*shard-01") as e:
        r.search(["q"], 3)
    assert e.value.status_code == 503
    assert r.score("q", [0, 7]) == [1.0, 4.0]  # scores that need only live shards still work
    with pytest.raises(ShardUnavailableError):
        r.score("q", [4])


def test_partial_mode_answers_from_live_shards_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    r = ShardedRetriever("bm25", shards(RuntimeError("replica died")), list, on_failure="partial")
    with caplog.at_level(logging.WARNING, "ragserve.retrieval"):
        assert r.search(["q"], 3) == [[Hit(7, 4.0), Hit(1, 3.0), Hit(2, 2.0)]]
    assert "shard-01" in caplog.text and "partial" in caplog.text
    everything_down = [Scripted(s.info, s.scores, RuntimeError("x")) for s in shards()]
    with pytest.raises(ShardUnavailableError):
        ShardedRetriever("bm25", everything_down, list, on_failure="partial").search(["q"], 3)


def test_unknown_failure_mode_is_refused() -> None:
    with pytest.raises(InputError, match="error or partial"):
        ShardedRetriever("bm25", shards(), list, on_failure="ignore")
