"""``ragserve bench spec``: RaLMSpec against the plain loop, same prompts, one run, every output
checked token for token.

Variants, as the paper names them: ``spec`` (speculation alone: a cache of the passages read,
stride 3, verification waited for), ``P`` (+ prefetch: the cache takes every hit of each real
search), ``S`` (+ OS³ stride), ``A`` (+ asynchronous verification) and ``PSA`` (all three).

Retrieval grows with the corpus and generation does not, so ``--distractors N`` adds N synthetic
passages: sentences of real passages recombined, their vectors real vectors perturbed and
renormalised (the encoder never sees them). Their text exists, so a distractor that wins a
retrieval is read like any passage.
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ragserve.corpus.documents import Passage
from ragserve.engine.auto_rag import AutoRag
from ragserve.engine.events import Step, TokenText
from ragserve.engine.ralm import Ralm, RalmState
from ragserve.engine.request import RagOptions, RagRequest
from ragserve.engine.speculative import Search, SpecStats
from ragserve.generation.base import Generator, SamplingParams
from ragserve.retrieval.base import Hit, Retriever

VARIANTS: dict[str, dict[str, Any]] = {
    "spec": {"prefetch": False, "fixed_stride": 3, "asynchronous": False},
    "P": {"prefetch": True, "fixed_stride": 3, "asynchronous": False},
    "S": {"prefetch": False, "fixed_stride": None, "asynchronous": False},
    "A": {"prefetch": False, "fixed_stride": 3, "asynchronous": True},
    "PSA": {"prefetch": True, "fixed_stride": None, "asynchronous": True},
}


class WithDistractors:
    """A docstore whose passage ids past the real ones are synthetic: recombined real sentences,
    the same text for the same id every time."""

    def __init__(self, docstore, n_real: int, sentences: Sequence[str], n_fake: int = 0,  # type: ignore[no-untyped-def]
                 seed: int = 0):  # fmt: skip
        self.docstore = docstore
        self.n_real = n_real
        self.n_fake = n_fake
        self.sentences = list(sentences)
        self.seed = seed

    def __len__(self) -> int:
        return self.n_real + self.n_fake

    def text(self, i: int) -> str:
        rng = random.Random(self.seed * 1_000_003 + i)
        return " ".join(rng.choice(self.sentences) for _ in range(3))

    def get(self, ids: Sequence[int]) -> list[Passage]:
        real = {p.id: p for p in self.docstore.get([i for i in ids if i < self.n_real])}
        return [
            real[i] if i < self.n_real else Passage(i, f"distractor-{i}", f"distractor-{i}", "",
                                                    self.text(i))
            for i in ids
        ]  # fmt: skip


def sentences_of(texts: Sequence[str], limit: int = 200_000) -> list[str]:
    out = []
    for t in texts:
        out.extend(s.strip() for s in re.split(r"(?<=[.!?])\s+", t) if len(s.split()) >= 4)
        if len(out) >= limit:
            break
    return out


def dense_with_distractors(dense, n: int, factory: str, seed: int = 0):  # type: ignore[no-untyped-def]
    """The dense retriever over its vectors plus ``n`` perturbed copies (renormalised).

    For exact search the vectors go into faiss a chunk at a time and the retriever reads them
    back from faiss's own storage: one copy in memory, so millions fit."""
    import faiss

    from ragserve.retrieval.dense import DenseRetriever, VectorSearch, make_faiss_index

    real = np.ascontiguousarray(dense._search.vectors, dtype=np.float32)
    rng = np.random.default_rng(seed)

    def chunks():  # type: ignore[no-untyped-def]
        for start in range(0, n, 100_000):
            m = min(100_000, n - start)
            base = real[rng.integers(0, len(real), m)]
            v = base + rng.normal(scale=0.08, size=base.shape).astype(np.float32)
            yield np.ascontiguousarray(v / np.linalg.norm(v, axis=1, keepdims=True))

    if factory == "Flat":
        index = make_faiss_index(real, factory)
        for chunk in chunks():
            index.add(chunk)
        total, dim = index.ntotal, real.shape[1]
        vectors = faiss.rev_swig_ptr(index.get_xb(), total * dim).reshape(total, dim)
    else:
        vectors = np.ascontiguousarray(np.concatenate([real, *chunks()]), dtype=np.float32)
        index = make_faiss_index(vectors, factory)
    return DenseRetriever(VectorSearch(index, vectors, factory), dense._encoder)


@dataclass
class Run:
    latency_s: float
    output: Any  # what must be identical to the baseline's
    stats: Any
    search_s: float


async def ralm_output(
    generator: Generator,
    retriever: Retriever,
    docstore: Any,
    search: Search,
    question: str,
    max_tokens: int,
    variant: str | None,
) -> tuple[RalmState, SpecStats]:
    opts = VARIANTS.get(variant or "", {})
    run = Ralm(generator, retriever, docstore, search, question,
               SamplingParams(max_tokens=max_tokens), speculative=variant is not None,
               **opts)  # fmt: skip
    return await run.run(), run.stats


async def auto_rag_output(
    generator: Generator,
    retriever: Retriever,
    docstore: Any,
    search: Search,
    question: str,
    max_tokens: int,
    variant: str | None,
    max_iterations: int = 5,
    **speculation: Any,
) -> tuple[tuple[Any, ...], SpecStats]:
    """The answer and every step of the trace but its time and scores: the output to compare.
    ``max_tokens`` is unused: turns have lengths of their own."""
    opts = {**VARIANTS.get(variant or "", {}), **speculation}
    request = RagRequest(
        [{"role": "user", "content": question}],
        rag=RagOptions(
            strategy="auto_rag", speculative=variant is not None, max_iterations=max_iterations
        ),
    )
    run = AutoRag(generator, retriever, docstore, search, request, **opts)
    out: list[Any] = []
    async for e in run.run():
        if isinstance(e, Step):
            out.append((e.iteration, e.kind, e.text, e.query, e.passages))
        elif isinstance(e, TokenText):
            out.append(e.text)
    return tuple(out), run.stats


STRATEGIES = {"ralm": ralm_output, "auto_rag": auto_rag_output}


async def run_one(
    generator: Generator,
    retriever: Retriever,
    docstore,  # type: ignore[no-untyped-def]
    question: str,
    max_tokens: int,
    variant: str | None,
    strategy: str = "ralm",
) -> Run:
    spent = [0.0]

    async def search(queries: Sequence[str], k: int) -> list[list[Hit]]:
        t = time.perf_counter()
        try:
            return await asyncio.to_thread(retriever.search, queries, k)
        finally:
            spent[0] += time.perf_counter() - t

    reset = getattr(generator, "reset_prefix_cache", None)
    if reset is not None:
        await reset()  # no run reads the prompts the previous one left cached
    getattr(retriever, "clear_query_cache", lambda: None)()  # nor the queries it encoded
    t = time.perf_counter()
    output, stats = await STRATEGIES[strategy](
        generator, retriever, docstore, search, question, max_tokens, variant
    )
    return Run(time.perf_counter() - t, output, stats, spent[0])


def bench(
    generator: Generator,
    retriever: Retriever,
    docstore,  # type: ignore[no-untyped-def]
    questions: Sequence[str],
    variants: Sequence[str],
    max_tokens: int = 128,
    strategy: str = "ralm",
) -> dict[str, Any]:
    """Each question through the baseline and each variant, one request at a time."""

    async def one(q: str, tokens: int, v: str | None) -> Run:
        return await run_one(generator, retriever, docstore, q, tokens, v, strategy)

    async def go() -> dict[str, list[Run]]:
        out: dict[str, list[Run]] = {"base": []}
        for v in variants:
            out[v] = []
        # Warm-up, not counted: first calls load kernels and fill the encoder's caches.
        await one(questions[0][::-1], 8, None)
        for q in questions:
            # Interleaved per question: machine noise falls on every variant alike.
            out["base"].append(await one(q, max_tokens, None))
            for v in variants:
                out[v].append(await one(q, max_tokens, v))
        return out

    runs = asyncio.run(go())
    base = runs["base"]
    base_s = sum(r.latency_s for r in base)
    share = sum(r.search_s for r in base) / base_s
    rows = {
        "base": {
            "mean_latency_s": round(base_s / len(base), 3),
            "retrieval_share": round(share, 3),
            "amdahl_bound": round(1 / max(1 - share, 1e-9), 2),
            "searches": sum(r.stats.searches for r in base),
            "steps": sum(r.stats.steps for r in base),
        }
    }
    for v in variants:
        rs = runs[v]
        total = sum(r.latency_s for r in rs)
        guessed = sum(r.stats.cache_hits for r in rs)
        searches = sum(r.stats.searches for r in rs)
        rows[v] = {
            "mean_latency_s": round(total / len(rs), 3),
            "speedup": round(base_s / total, 3),
            "identical": sum(a.output == b.output for a, b in zip(base, rs, strict=True)),
            "outputs": len(rs),
            "acceptance": round(sum(r.stats.accepted for r in rs) / max(guessed, 1), 3),
            "searches": searches,
            "searches_saved": round(1 - searches / rows["base"]["searches"], 3),
            "rollbacks": sum(r.stats.rollbacks for r in rs),
            "mean_stride": round(float(np.mean([s for r in rs for s in r.stats.strides])), 2),
        }  # fmt: skip
    return rows


def bm25_with_distractors(docs: WithDistractors, n: int):  # type: ignore[no-untyped-def]
    """BM25 fitted anew over the real passages and ``n`` synthetic ones."""
    from ragserve.retrieval.bm25 import BM25Retriever

    real = [f"{p.title} {p.text}" for p in docs.docstore.get(list(range(docs.n_real)))]
    fake = (docs.text(i) for i in range(docs.n_real, docs.n_real + n))
    return BM25Retriever.fit([*real, *fake])


def markdown(res: dict[str, Any]) -> str:
    lines = [
        f"### {res['retriever']} on {res['data']}: {res['passages']:,} passages "
        f"({res['distractors']:,} synthetic), {res['prompts']} prompts, `{res['strategy']}`",
        "",
        f"Baseline: {res['rows']['base']['mean_latency_s']} s per request, "
        f"{res['rows']['base']['retrieval_share']:.0%} of it in retrieval "
        f"(Amdahl bound {res['rows']['base']['amdahl_bound']}×).",
        "",
        "| variant | s per request | speed-up | identical | acceptance | searches saved "
        "| rollbacks | mean stride |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for v, r in res["rows"].items():
        if v == "base":
            continue
        lines.append(
            f"| {v} | {r['mean_latency_s']} | {r['speedup']}× | {r['identical']}/{r['outputs']} "
            f"| {r['acceptance']} | {r['searches_saved']:.0%} | {r['rollbacks']} "
            f"| {r['mean_stride']} |"
        )
    return "\n".join(lines) + "\n"


def bench_retriever(index: Any, kind: str, distractors: int) -> tuple[Retriever, Any]:
    """The retriever ``kind`` (dense: exact Flat, hnsw, bm25) over the evaluation index plus
    ``distractors`` synthetic passages, and the docstore that holds their text."""
    stored = "bm25" if kind == "bm25" else "dense"
    real = index.retrievers[stored]
    n_real = len(real)
    docs, retriever = index.docstore, real
    if distractors:
        texts = [p.text for p in index.docstore.get(list(range(min(n_real, 20_000))))]
        docs = WithDistractors(index.docstore, n_real, sentences_of(texts), distractors)
        print(f"adding {distractors:,} synthetic passages to {n_real:,} real ones")
        if stored == "bm25":
            retriever = bm25_with_distractors(docs, distractors)
    if stored == "dense":
        factory = "HNSW32" if kind == "hnsw" else "Flat"
        if distractors:
            retriever = dense_with_distractors(real, distractors, factory)
        elif factory != real.factory:
            retriever = real.with_factory(factory)
    return retriever, docs
