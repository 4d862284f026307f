"""Retrieval on the shared evaluation data (skips with a reason where it is absent)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ragserve.eval.datasets import load_dataset
from ragserve.retrieval.bm25 import BM25Retriever
from tests.conftest import eval_retrieval

pytestmark = pytest.mark.integration


def scifact_texts(data_dir: Path) -> list[str]:
    docs = [json.loads(line) for line in (data_dir / "scifact" / "corpus.jsonl").open()]
    return [f"{d['title']}\n{d['text']}" for d in docs]


def test_okapi_reproduces_rank_bm25_on_scifact(data_dir: Path) -> None:
    import numpy as np
    from rank_bm25 import BM25Okapi

    texts = scifact_texts(data_dir)
    ours = BM25Retriever.fit(texts, variant="okapi", k1=1.5, b=0.75)
    ref = BM25Okapi([ours._tokenize(t) for t in texts], k1=1.5, b=0.75, epsilon=0)
    queries = [q for _, q in load_dataset(data_dir / "scifact").queries]
    hits = ours.search(queries, 10)
    for q, got in zip(queries, hits, strict=True):
        expected = ref.get_scores(ours._tokenize(q))
        top = np.lexsort((np.arange(len(expected)), -expected))[:10]
        assert [h.doc_id for h in got] == top.tolist()
        assert [h.score for h in got] == pytest.approx(expected[top].tolist(), rel=1e-5)


def test_eval_command_on_nq(data_dir: Path, tmp_path: Path) -> None:
    metrics = eval_retrieval(data_dir / "nq", tmp_path, "bm25,dense,hybrid")
    assert metrics["data"] == "nq" and metrics["queries"] == 1000
    assert metrics["dense/recall@10"] > 0.95 and metrics["bm25/recall@10"] > 0.85
    assert metrics["hybrid/recall@10"] >= metrics["bm25/recall@10"]
    assert metrics["bm25/qps"] > 0 and metrics["dense/build_s"] > 0


def test_bm25_scifact_ndcg(data_dir: Path, tmp_path: Path) -> None:
    metrics = eval_retrieval(data_dir / "scifact", tmp_path, "bm25")
    assert metrics["bm25/ndcg@10"] >= 0.68
