from pathlib import Path

import pytest

from ragserve.errors import InputError
from ragserve.retrieval.bm25 import BM25Retriever
from tests.conftest import TEXTS


@pytest.fixture(scope="module")
def bm25() -> BM25Retriever:
    return BM25Retriever.fit(TEXTS)


def test_finds_the_relevant_passage(bm25: BM25Retriever) -> None:
    hits = bm25.search(["how do I parse a JSON string", "compressing files"], 2)
    assert hits[0][0].doc_id == 2 and hits[1][0].doc_id == 3
    assert hits[0][0].score > hits[0][1].score


def test_score_matches_search_exactly(bm25: BM25Retriever) -> None:
    q = "nonlocal variables in the enclosing scope"
    hits = bm25.search([q], 5)[0]
    assert bm25.score(q, [h.doc_id for h in hits]) == [h.score for h in hits]


def test_batched_equals_single(bm25: BM25Retriever) -> None:
    qs = ["global statement", "lambda functions", "gzip"]
    assert bm25.search(qs, 3) == [bm25.search([q], 3)[0] for q in qs]


def test_okapi_matches_rank_bm25() -> None:
    from rank_bm25 import BM25Okapi

    okapi = BM25Retriever.fit(TEXTS, variant="okapi", k1=1.5, b=0.75)
    ref = BM25Okapi([okapi._tokenize(t) for t in TEXTS], k1=1.5, b=0.75, epsilon=0)
    q = "the json module parses a string"
    expected = ref.get_scores(okapi._tokenize(q))
    got = okapi.score(q, range(len(TEXTS)))
    assert got == pytest.approx(list(expected), rel=1e-5)


def test_bad_input(bm25: BM25Retriever) -> None:
    with pytest.raises(InputError, match="empty query"):
        bm25.search([" "], 3)
    with pytest.raises(InputError, match="k must be a positive integer"):
        bm25.search(["json"], 0)
    with pytest.raises(InputError, match="unknown passage ids"):
        bm25.score("json", [0, 5])
    assert len(bm25.search(["json"], 1000)[0]) == len(TEXTS)  # k above corpus size is clipped
    assert bm25.search(["zzzz unknownword"], 2)[0][0].score == 0.0


def test_save_load_round_trip(tmp_path: Path, bm25: BM25Retriever) -> None:
    params = bm25.save(tmp_path)
    loaded = BM25Retriever.load(tmp_path, params)
    assert loaded.search(["global"], 5) == bm25.search(["global"], 5)
