import pytest

from ragserve.retrieval.bm25 import BM25Retriever
from ragserve.retrieval.dense import DenseRetriever
from ragserve.retrieval.hybrid import RRF_K, HybridRetriever
from tests.conftest import TEXTS


@pytest.fixture(scope="module")
def members() -> list:
    return [BM25Retriever.fit(TEXTS), DenseRetriever.fit(TEXTS)]


@pytest.mark.parametrize("method", ["zscore", "rrf"])
def test_search_and_score_agree(members: list, method: str) -> None:
    h = HybridRetriever(members, method=method)
    q = "parse a json string"
    hits = h.search([q], 5)[0]
    assert hits[0].doc_id == 2
    assert h.score(q, [x.doc_id for x in hits]) == pytest.approx([x.score for x in hits])


def test_rrf_is_the_sum_of_reciprocal_ranks(members: list) -> None:
    q = "global declaration"
    ranks = [{hit.doc_id: r for r, hit in enumerate(m.search([q], 5)[0], 1)} for m in members]
    h = HybridRetriever(members, method="rrf")
    for hit in h.search([q], 5)[0]:
        expected = sum(1 / (RRF_K + r[hit.doc_id]) for r in ranks) / 2
        assert hit.score == pytest.approx(expected)
