"""SEAL with the real model over the real demo index: keys, search, the server and the CLI."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from ragserve.engine.seal import SealConfig, SealRetriever
from ragserve.errors import IndexMismatchError
from ragserve.indexing import LoadedIndex, load_index
from tests.conftest import LiveServer, eval_retrieval

pytestmark = pytest.mark.integration

QUESTIONS = [
    "What does the nonlocal statement do?",
    "How do I parse a JSON string?",
    "How can I compress a file with gzip?",
    "What is a lambda expression?",
    "How do I read a CSV file?",
    "What does the with statement do?",
    "How are exceptions raised?",
    "How do I sort a list?",
    "What is a generator function?",
    "How do I format a string?",
    "How does the import system find modules?",
    "What is a dictionary comprehension?",
    "How do I start a thread?",
    "What does the assert statement do?",
    "How do I open a file for writing?",
    "What is the difference between a list and a tuple?",
]


@pytest.fixture(scope="module")
def demo(demo_index_dir: Path, generator) -> Iterator[LoadedIndex]:  # type: ignore[no-untyped-def]
    index = load_index(
        demo_index_dir, "python-docs", ["fmindex"], {"fmindex": {"tokenizer": generator}}
    )
    yield index
    index.close()


@pytest.fixture(scope="module")
def seal(demo: LoadedIndex, generator) -> SealRetriever:  # type: ignore[no-untyped-def]
    return SealRetriever(demo.retrievers["fmindex"], generator)  # type: ignore[arg-type]


def test_every_generated_key_occurs_in_the_corpus(seal: SealRetriever) -> None:
    keys = [k for ks in asyncio.run(seal.keys(QUESTIONS)) for k in ks]
    assert len(keys) >= 1000
    assert all(seal.index.count(k.tokens, title=k.title) > 0 for k in keys)
    assert all(1 <= len(k.tokens) <= 10 and k.logprob < 0 for k in keys)
    assert any(k.title for k in keys)


def test_the_key_phrase_beam_copies_the_questions_distinctive_words(demo, generator) -> None:  # type: ignore[no-untyped-def]
    only_phrases = SealConfig(beam=1, title_beam=0, query_beam=15)
    seal = SealRetriever(demo.retrievers["fmindex"], generator, only_phrases)
    keys = asyncio.run(seal.keys(["What does the nonlocal statement do?"]))[0]
    texts = [generator.detokenize(k.tokens).strip().lower() for k in keys]
    question = "what does the nonlocal statement do?"
    copied = [t for t in texts if t in question]
    assert len(copied) >= len(texts) // 2  # all but the one text beam's keys
    best = max(keys, key=seal.weight)
    assert "nonlocal" in generator.detokenize(best.tokens).lower()


def test_search_finds_the_passage_and_agrees_with_score(seal: SealRetriever, demo) -> None:  # type: ignore[no-untyped-def]
    q = QUESTIONS[0]
    hits = seal.search([q], 5)[0]
    titles = [p.title for p in demo.docstore.get([h.doc_id for h in hits])]
    assert any("nonlocal" in t.lower() or "simple statements" in t.lower() for t in titles), titles
    assert seal.score(q, [h.doc_id for h in hits]) == [h.score for h in hits]


def test_the_same_query_gets_the_same_keys_from_a_fresh_retriever(demo, generator) -> None:  # type: ignore[no-untyped-def]
    fm = demo.retrievers["fmindex"]
    q = QUESTIONS[1]
    first = asyncio.run(SealRetriever(fm, generator).keys([q]))[0]
    asyncio.run(SealRetriever(fm, generator).keys([QUESTIONS[2]]))  # other work in between
    second = asyncio.run(SealRetriever(fm, generator).keys([q]))[0]
    assert [(k.tokens, k.title, k.logprob) for k in first] == [
        (k.tokens, k.title, k.logprob) for k in second
    ]


def test_query_with_no_corpus_tokens_is_best_effort(seal: SealRetriever) -> None:
    hits = seal.search(["ꙮꙮ 𒀱𒀱 ᚠᚢᚦ"], 3)[0]
    assert len(hits) <= 3  # a list, perhaps empty: never an error or a hang


def test_index_of_another_tokenizer_is_refused_naming_both(demo, generator) -> None:  # type: ignore[no-untyped-def]
    fm = demo.retrievers["fmindex"]
    fm.params = {**fm.params, "tokenizer": "other-model"}
    try:
        with pytest.raises(IndexMismatchError, match="other-model"):
            SealRetriever(fm, generator, SealConfig(beam=2))
    finally:
        fm.params = {**fm.params, "tokenizer": generator.identity()["tokenizer"]}


def ask(server: LiveServer, **rag) -> httpx.Response:  # type: ignore[no-untyped-def]
    body = {
        "model": "ragserve",
        "messages": [{"role": "user", "content": "What does the nonlocal statement do?"}],
        "max_tokens": 8,
        "rag": rag,
    }
    return httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=180)


def test_server_answers_with_seal_and_seal_in_fusion(live_server: LiveServer) -> None:
    client = openai.OpenAI(base_url=f"{live_server.url}/v1", api_key="none")
    out = client.chat.completions.create(
        model="ragserve",
        messages=[{"role": "user", "content": "What does the nonlocal statement do?"}],
        max_tokens=8,
        extra_body={"rag": {"retriever": "seal", "k": 3, "seal_beam": 6}},
    )
    cites = out.model_extra["citations"]  # type: ignore[index]
    assert out.choices[0].message.content and 1 <= len(cites) <= 3
    r = ask(live_server, retriever="bm25+dense+seal", k=3)
    assert r.status_code == 200 and len(r.json()["citations"]) == 3


@pytest.mark.parametrize(
    ("rag", "field"),
    [
        ({"retriever": "seal", "seal_beam": 0}, "seal_beam"),
        ({"retriever": "seal", "seal_key_tokens": 99}, "seal_key_tokens"),
        ({"retriever": "bm25+nope"}, "rag.retriever"),
    ],
)
def test_bad_seal_settings_are_a_400_naming_the_field(live_server, rag, field) -> None:  # type: ignore[no-untyped-def]
    r = ask(live_server, **rag)
    assert r.status_code == 400
    err = r.json()["error"]
    assert field in (err.get("param") or "") + err["message"]


def test_eval_retrieval_with_seal_on_nq(data_dir: Path, tmp_path: Path) -> None:
    metrics = eval_retrieval(data_dir / "nq", tmp_path, "fmindex,seal", "--limit", "3")
    assert metrics["queries"] == 3
    assert 0 <= metrics["seal/recall@10"] <= 1 and metrics["seal/qps"] > 0
