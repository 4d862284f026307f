"""``ralm`` and ``auto_rag`` with and without speculation on the real model, the real demo index
and each real retriever: the same tokens for every question, and through the server the same
answer."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest

from ragserve.cli import main
from ragserve.engine.core import Engine
from ragserve.engine.ralm import Ralm, RalmState
from ragserve.eval.spec import auto_rag_output, bench, bench_retriever
from ragserve.generation.base import SamplingParams
from ragserve.indexing import load_index
from tests.conftest import LiveServer

N_QUESTIONS = 24


@pytest.fixture(scope="module")
def engine(demo_index_dir: Path, generator):  # type: ignore[no-untyped-def]
    index = load_index(demo_index_dir, "python-docs", ["bm25", "dense"])
    retrievers = dict(index.retrievers)
    retrievers["hnsw"] = retrievers["dense"].with_factory("HNSW32")
    yield Engine(retrievers, index.docstore, generator, "bm25")
    index.close()


def questions(engine: Engine) -> list[str]:
    """Questions about the demo corpus, one per passage title, spread over the corpus."""
    n = len(engine.retrievers["bm25"])
    titles = [p.title for p in engine.docstore.get(list(range(0, n, n // (2 * N_QUESTIONS))))]
    return [f"What does {t} do in Python?" for t in dict.fromkeys(titles)][:N_QUESTIONS]


@pytest.mark.parametrize("retriever", ["bm25", "dense", "hnsw"])
def test_speculation_gives_the_same_tokens(engine: Engine, retriever: str) -> None:
    qs = questions(engine)
    assert len(qs) == N_QUESTIONS
    # Shorter than the method's 128 tokens over 256-token passages, so that 2 x 24 requests per
    # retriever fit a test run; the chain still has 3 retrievals, 2 of them guessed.
    params = SamplingParams(max_tokens=12)

    async def run(speculative: bool) -> list[tuple[Ralm, RalmState]]:
        runs = [
            Ralm(engine.generator, engine.retriever(retriever), engine.docstore,
                 engine.searcher(retriever), q, params, speculative=speculative,
                 passage_tokens=32)
            for q in qs
        ]  # fmt: skip
        slots = asyncio.Semaphore(8)  # as many as the model's sequences: each keeps its cache

        async def one(r: Ralm) -> RalmState:
            async with slots:
                return await r.run()

        return list(zip(runs, await asyncio.gather(*(one(r) for r in runs)), strict=True))

    plain = asyncio.run(run(False))
    spec = asyncio.run(run(True))
    assert sum(a[1] == b[1] for a, b in zip(plain, spec, strict=True)) == N_QUESTIONS
    assert any(len(final.generated) > 4 for _, final in plain)
    steps = sum(r.stats.steps for r, _ in plain)
    assert sum(r.stats.searches for r, _ in plain) == steps  # the baseline searches every step
    assert sum(r.stats.searches for r, _ in spec) < steps  # speculation saves real searches
    assert sum(r.stats.accepted for r, _ in spec) > 0


def test_auto_rag_speculation_gives_the_same_turns_and_answer(engine: Engine) -> None:
    # Three turns: the first query's search is real, the refined ones are guessed (stride 2).
    # Plain and speculative runs go side by side: outputs are batch-invariant. Questions from
    # across the corpus: whether the model refines its query on a given one varies by CPU.
    qs = questions(engine)[::3][:3]

    async def one(q: str, variant: str | None) -> tuple[Any, Any]:
        return await auto_rag_output(engine.generator, engine.retriever("bm25"), engine.docstore,
                                     engine.searcher("bm25"), q, 0, variant, max_iterations=3,
                                     fixed_stride=2)  # fmt: skip

    async def run() -> list[tuple[Any, Any]]:
        return await asyncio.gather(*(one(q, v) for v in (None, "spec") for q in qs))

    results = asyncio.run(run())
    plain, spec = results[: len(qs)], results[len(qs) :]
    assert [out for out, _ in spec] == [out for out, _ in plain]
    assert all(any(step[1] == "retrieval" for step in out[:-1]) for out, _ in plain)
    assert sum(stats.cache_hits for _, stats in spec) > 0  # refined queries were guessed
    assert sum(stats.steps for _, stats in spec) == sum(stats.steps for _, stats in plain)


def test_bench_spec_compares_every_output_with_the_baseline(
    engine: Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = bench(engine.generator, engine.retriever("dense"), engine.docstore,
                 questions(engine)[:3], ["spec", "PSA"], max_tokens=8)  # fmt: skip
    assert rows["base"]["searches"] == rows["base"]["steps"] > 3
    assert 0 <= rows["base"]["retrieval_share"] < 1
    for v in ("spec", "PSA"):
        assert rows[v]["identical"] == rows[v]["outputs"] == 3
        assert rows[v]["speedup"] > 0 and rows[v]["searches"] <= rows["base"]["searches"]
    assert main(["bench", "spec", "--variants", "P,XYZ"]) == 2
    assert "unknown variants ['XYZ']" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["dense", "hnsw", "bm25"])
def test_bench_retriever_adds_distractors_to_every_kind(demo_index_dir: Path, kind: str) -> None:
    index = load_index(demo_index_dir, "python-docs", ["bm25", "dense"])
    try:
        n_real = len(index.retrievers["bm25"])
        retriever, docs = bench_retriever(index, kind, 300)
        assert len(retriever) == len(docs) == n_real + 300
        fake = docs.get([n_real + 7])[0]
        assert fake.external_id == f"distractor-{n_real + 7}" and fake.text == docs.text(n_real + 7)
        q = "What does json.loads do in Python?"
        hits = retriever.search([q], 20)[0]
        assert len(hits) == 20 and retriever.score(q, [h.doc_id for h in hits]) == [
            h.score for h in hits
        ]
    finally:
        index.close()


def test_ralm_through_the_server_streams_the_same_answer(live_server: LiveServer) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=f"{live_server.url}/v1", api_key="unused", max_retries=0)
    question = [{"role": "user", "content": "What does the nonlocal statement do?"}]
    answers = []
    for speculative in (False, True):
        rag = {"strategy": "ralm", "speculative": speculative, "retriever": "bm25"}
        resp = client.chat.completions.create(
            model="ragserve", messages=question, max_tokens=32, extra_body={"rag": rag}
        )
        body = resp.model_dump()
        assert body["citations"], "the passages read are cited"
        answers.append(resp.choices[0].message.content)
        stream = client.chat.completions.create(
            model="ragserve", messages=question, max_tokens=32, stream=True,
            extra_body={"rag": rag},
        )  # fmt: skip
        answers.append("".join(c.choices[0].delta.content or "" for c in stream if c.choices))
    assert answers[0] and len(set(answers)) == 1
    word = answers[0].split()[1]
    cut = client.chat.completions.create(
        model="ragserve", messages=question, max_tokens=32, stop=[word],
        extra_body={"rag": {"strategy": "ralm", "speculative": True, "retriever": "bm25"}},
    )  # fmt: skip
    assert cut.choices[0].message.content == answers[0][: answers[0].index(word)]


def test_ralm_rejects_an_unknown_retriever(live_server: LiveServer) -> None:
    r = httpx.post(
        f"{live_server.url}/v1/chat/completions",
        json={"model": "ragserve", "messages": [{"role": "user", "content": "hi"}],
              "rag": {"strategy": "ralm", "retriever": "nope", "speculative": True}},
        timeout=60,
    )  # fmt: skip
    assert r.status_code == 400
    assert "retriever 'nope' is not available" in r.json()["error"]["message"]
