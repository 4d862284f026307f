"""Answers on the demo corpus through ``single`` with the server's defaults (issue 9's "answers a
user can read"): latency, answer length, empty and looping answers.

    .venv/bin/python -m benchmarks.answers   # needs the demo index (make index)

Writes ``benchmarks/results/answers.{json,md}``.
"""

from __future__ import annotations

import asyncio
import json
import statistics
from pathlib import Path

from benchmarks import machine
from ragserve.config import Settings
from ragserve.engine import RagOptions
from ragserve.engine.prompt import NO_ANSWER
from ragserve.eval.qa import answer_question, looping
from ragserve.server.app import load_engine

RESULTS = Path(__file__).parent / "results"

# Hand-written questions a new user might ask about the Python documentation.
QUESTIONS = [
    "What does the nonlocal statement do?",
    "How do I parse JSON from a string?",
    "What is a lambda expression?",
    "How do I compress a file with gzip?",
    "What does the with statement do?",
    "How do I sort a list in reverse?",
    "What is a generator?",
    "How can I read a CSV file?",
    "What does the global statement do?",
    "How do I get the current working directory?",
    "What is the difference between a list and a tuple?",
    "How do I run a shell command from Python?",
]


async def run() -> list[dict]:
    engine, index = await asyncio.to_thread(load_engine, Settings.load())
    rows = []
    try:
        await answer_question(engine, QUESTIONS[0], RagOptions(), 256)  # warm the caches
        for q in QUESTIONS:
            o = await answer_question(engine, q, RagOptions(), 256)
            rows.append({"question": q, "answer": o.answer, "finish": o.finish,
                         "seconds": round(o.seconds, 3)})  # fmt: skip
    finally:
        await engine.generator.aclose()
        index.close()
    return rows


def main() -> None:
    rows = asyncio.run(run())
    seconds = [r["seconds"] for r in rows]
    summary = {
        "benchmark": "answers",
        "strategy": "single",
        "retriever": "hybrid (server default)",
        "questions": len(rows),
        "machine": machine(),
        "latency_p50_s": round(statistics.median(seconds), 3),
        "latency_max_s": max(seconds),
        "empty": sum(r["answer"] in ("", NO_ANSWER["single"]) for r in rows),
        "looping": sum(looping(r["answer"]) for r in rows),
        "answer_words_mean": round(statistics.mean(len(r["answer"].split()) for r in rows), 1),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "answers.json").write_text(json.dumps({**summary, "answers": rows}, indent=2) + "\n")
    lines = ["# Answers on the demo corpus (`single`, server defaults)", "",
             *(f"- {k}: {v}" for k, v in summary.items() if k != "benchmark"), "",
             "| question | seconds | finish | answer |", "|---|---|---|---|"]  # fmt: skip
    for r in rows:
        answer = " ".join(r["answer"].split()).replace("|", "\\|")
        lines.append(f"| {r['question']} | {r['seconds']} | {r['finish']} | {answer} |")
    (RESULTS / "answers.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
