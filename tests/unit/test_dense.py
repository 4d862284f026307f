"""Dense retrieval with the real bundled MiniLM encoder and real faiss indexes."""

from pathlib import Path

import numpy as np
import pytest

from ragserve.errors import IndexMismatchError, InputError
from ragserve.retrieval.dense import DenseRetriever
from ragserve.retrieval.encoders import load_encoder
from tests.conftest import TEXTS


@pytest.fixture(scope="module")
def dense() -> DenseRetriever:
    return DenseRetriever.fit(TEXTS)


def test_finds_relevant_passages_by_meaning(dense: DenseRetriever) -> None:
    hits = dense.search(["read a json document into python objects", "shrink a file"], 1)
    assert hits[0][0].doc_id == 2 and hits[1][0].doc_id == 3


def test_score_is_exactly_what_search_ranks_by(dense: DenseRetriever) -> None:
    q = "functions without a name"
    hits = dense.search([q], 5)[0]
    assert dense.score(q, [h.doc_id for h in hits]) == [h.score for h in hits]
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_batch_does_not_change_results(dense: DenseRetriever) -> None:
    qs = ["global variables", "compression", "anonymous functions"]
    assert dense.search(qs, 3) == [dense.search([q], 3)[0] for q in qs]


def test_vectors_are_normalised_and_close_to_the_reference_model() -> None:
    fast = load_encoder().encode(TEXTS)
    ref = load_encoder("fp32-st").encode(TEXTS)
    assert np.allclose(np.linalg.norm(fast, axis=1), 1.0, atol=1e-5)
    assert (fast * ref).sum(axis=1).min() > 0.999


def test_other_factories_reuse_the_stored_vectors(tmp_path: Path, dense: DenseRetriever) -> None:
    hnsw = dense.with_factory("HNSW32")
    q = "the nonlocal statement"
    assert hnsw.search([q], 2) == dense.search([q], 2)
    params = hnsw.save(tmp_path)
    assert params["factory"] == "HNSW32" and params["encoder"] == "all-MiniLM-L6-v2"
    loaded = DenseRetriever.load(tmp_path, params)
    assert loaded.search([q], 3) == hnsw.search([q], 3)
    ivf = dense.with_factory("IVF2,Flat")  # trained on the stored vectors
    assert ivf.search([q], 2) == dense.search([q], 2)
    with pytest.raises(InputError, match="invalid faiss factory string"):
        dense.with_factory("NotAnIndex99")


def test_encoder_mismatch_names_both(tmp_path: Path, dense: DenseRetriever) -> None:
    params = dense.save(tmp_path)
    with pytest.raises(IndexMismatchError) as err:
        DenseRetriever.load(tmp_path, params, encoder=load_encoder("fp32-st"))
    assert params["precision"] in err.value.message and "fp32-st" in err.value.message


def test_bad_input(dense: DenseRetriever) -> None:
    with pytest.raises(InputError, match="empty query"):
        dense.search([""], 1)
    with pytest.raises(InputError, match="unknown passage ids"):
        dense.score("x", [-1])
    assert len(dense.search(["x"], 50)[0]) == len(TEXTS)


@pytest.mark.parametrize("factory", ["Flat", "HNSW32"])
def test_distractors_extend_the_corpus_and_keep_search_exact(
    dense: DenseRetriever, factory: str
) -> None:
    from ragserve.eval.spec import dense_with_distractors

    big = dense_with_distractors(dense, 250, factory)
    assert len(big) == len(TEXTS) + 250 and big.factory == factory
    q = "read a json document into python objects"
    hits = big.search([q], 10)[0]
    assert len(hits) == 10 and max(h.doc_id for h in big.search([q], 100)[0]) >= len(TEXTS)
    assert big.score(q, [h.doc_id for h in hits]) == [h.score for h in hits]
    assert big.score(q, [2]) == dense.score(q, [2])  # the real passages keep their vectors
