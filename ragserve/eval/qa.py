"""``ragserve eval qa``: answer a QA set's questions with a strategy and score the answers and the
passages read.

Answers are scored as SQuAD scores them (exact match and token F1 after normalising case,
punctuation, articles and spaces). Support: on HotpotQA, whether both supporting paragraphs were
read at some step; on NQ, whether some passage read holds a gold answer.
"""

from __future__ import annotations

import asyncio
import math
import platform
import re
import statistics
import string
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ragserve.engine import Finished, RagOptions, RagRequest, Retrieved, TokenText
from ragserve.engine.answer_guard import RepeatGuard
from ragserve.engine.core import Engine
from ragserve.engine.prompt import NO_ANSWER
from ragserve.errors import InputError
from ragserve.eval.datasets import load_dataset
from ragserve.generation.base import Generator, SamplingParams

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalize(text: str) -> str:
    """SQuAD's answer normalisation."""
    return " ".join(_ARTICLES.sub(" ", text.lower().translate(_PUNCT)).split())


def exact_match(prediction: str, golds: Sequence[str]) -> float:
    return float(any(normalize(prediction) == normalize(g) for g in golds))


def f1(prediction: str, golds: Sequence[str]) -> float:
    """Token F1 against the best-matching gold answer."""
    pred = normalize(prediction).split()
    best = 0.0
    for gold in golds:
        ref = normalize(gold).split()
        common = sum((Counter(pred) & Counter(ref)).values())
        if common:
            p, r = common / len(pred), common / len(ref)
            best = max(best, 2 * p * r / (p + r))
    return best


def holds_answer(text: str, golds: Sequence[str]) -> bool:
    padded = f" {normalize(text)} "
    return any(f" {normalize(g)} " in padded for g in golds if normalize(g))


def looping(answer: str) -> bool:
    """An answer that repeats a sentence or a long run of words."""
    guard = RepeatGuard()
    guard.feed(answer + "\n")
    return guard.stopped


@dataclass
class Outcome:
    """One question: the answer, what was read, and how long it took."""

    answer: str
    finish: str
    read_docs: list[str]
    read_texts: list[str]
    retrievals: int
    seconds: float


async def answer_question(
    engine: Engine, question: str, rag: RagOptions, max_tokens: int
) -> Outcome:
    request = RagRequest(
        messages=[{"role": "user", "content": question}],
        params=SamplingParams(max_tokens=max_tokens),
        rag=rag,
    )
    t0 = time.perf_counter()
    parts, docs, texts, retrievals, finish = [], [], [], 0, ""
    async for event in engine.run(request):
        if isinstance(event, Retrieved):
            retrievals += 1
            docs += [c.doc_id for c in event.citations]
            texts += [f"{c.title} {c.text}" for c in event.citations]
        elif isinstance(event, TokenText):
            parts.append(event.text)
        elif isinstance(event, Finished):
            finish = event.finish_reason
    answer = "".join(parts).strip()
    return Outcome(answer, finish, docs, texts, retrievals, time.perf_counter() - t0)


@dataclass
class QaReport:
    settings: dict[str, Any]
    metrics: dict[str, Any]

    def flat(self) -> dict[str, Any]:
        return {**self.settings, **self.metrics}

    def table(self) -> str:
        s, m = self.settings, self.metrics
        rows = [f"{s['data']} · {s['strategy']} · {s['retriever']} · {s['questions']} questions"]
        rows += [f"  {k:<28} {v}" for k, v in m.items()]
        return "\n".join(rows)


def score(outcomes: Sequence[Outcome], answers: Sequence[list[str]], gold: Sequence[list[str]],
          multi_hop: bool, strategy: str) -> dict[str, Any]:  # fmt: skip
    """Mean metrics over questions."""
    n = len(outcomes)
    support = []
    for o, a, g in zip(outcomes, answers, gold, strict=True):
        if multi_hop:
            support.append(float(set(g) <= set(o.read_docs)))
        else:
            support.append(float(any(holds_answer(t, a) for t in o.read_texts)))
    fallback = NO_ANSWER.get(strategy, "")
    latencies = sorted(o.seconds for o in outcomes)
    hist = Counter(o.retrievals for o in outcomes)
    read = [len(set(o.read_docs)) for o in outcomes]
    return {
        "em": round(
            sum(exact_match(o.answer, a) for o, a in zip(outcomes, answers, strict=True)) / n, 4
        ),
        "f1": round(sum(f1(o.answer, a) for o, a in zip(outcomes, answers, strict=True)) / n, 4),
        "support_recall": round(sum(support) / n, 4),
        "passages_read_mean": round(sum(read) / n, 3),
        "retrievals_mean": round(sum(hist[k] * k for k in hist) / n, 3),
        "retrievals_histogram": {str(k): hist[k] for k in sorted(hist)},
        "empty_share": round(sum(not o.answer or o.answer == fallback for o in outcomes) / n, 4),
        "looping_share": round(sum(looping(o.answer) for o in outcomes) / n, 4),
        "answer_words_mean": round(sum(len(o.answer.split()) for o in outcomes) / n, 2),
        "latency_p50_s": round(statistics.median(latencies), 3),
        "latency_p90_s": round(latencies[min(n - 1, math.ceil(0.9 * n) - 1)], 3),
    }


def run_qa_eval(
    data: str | Path,
    engine: Engine,
    rag: RagOptions,
    *,
    limit: int | None = None,
    max_tokens: int = 64,
    progress: bool = True,
    concurrency: int = 1,
) -> QaReport:
    """Every question (or the first ``limit``) through ``engine`` with the strategy in ``rag``;
    ``concurrency`` questions at a time (llama.cpp's batching is batch-invariant, so every
    question gets the same answer either way, SEAL's searches excepted; latencies then include
    the wait for a shared model)."""
    if concurrency < 1:
        raise InputError("concurrency must be at least 1")
    dataset = load_dataset(data)
    if dataset.kind != "qa" or not dataset.answers:
        raise InputError(f"{data}: eval qa needs a QA folder (questions.jsonl with answers)")
    questions = dataset.queries[:limit] if limit else dataset.queries
    answers = [dataset.answers[qid] for qid, _ in questions]
    gold = [list(dataset.relevant[qid]) for qid, _ in questions]

    async def run_all() -> list[Outcome]:
        bar = tqdm(
            total=len(questions), desc=f"{dataset.name} {rag.strategy}", unit="q",
            disable=not progress,
        )  # fmt: skip
        gate = asyncio.Semaphore(concurrency)

        async def one(text: str) -> Outcome:
            async with gate:
                outcome = await answer_question(engine, text, rag, max_tokens)
            bar.update()
            return outcome

        try:
            return list(await asyncio.gather(*(one(text) for _, text in questions)))
        finally:
            bar.close()

    outcomes = asyncio.run(run_all())
    multi_hop = dataset.name.startswith("hotpot") or any(len(g) > 1 for g in gold)
    metrics = score(outcomes, answers, gold, multi_hop, rag.strategy)
    generator: Generator = engine.generator
    settings = {
        "data": dataset.name,
        "strategy": rag.strategy,
        "retriever": rag.retriever or engine.default_retriever,
        "questions": len(questions),
        "k": rag.k if rag.strategy == "single" else None,
        "max_iterations": rag.max_iterations if rag.strategy == "auto_rag" else None,
        "max_passages": rag.max_passages if rag.strategy == "auto_rag" else None,
        "max_tokens": max_tokens,
        "concurrency": concurrency,
        "model": generator.model_name,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
    }
    return QaReport(settings, metrics)
