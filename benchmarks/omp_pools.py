"""The query encoder beside the model: llama.cpp's decode speed after torch has run in the same
process, the way the encoder runs it and the way it ran before.

    python -m benchmarks.omp_pools --out benchmarks/results

torch and llama.cpp share one libgomp. It keeps an OpenMP thread pool for every thread that
started a parallel region, for that thread's life; once pools hold more threads than there are
cores it stops spinning at barriers. This measures, in one process on the bundled GGUF and the
bundled encoder, the time per decoded token (greedy, 100 tokens after a 150-token prompt,
median of 3) in order:

1. before torch has run;
2. after 20 queries encoded as the encoder does it (torch on one thread);
3. after a 200-passage corpus encoded as the encoder does it (on a thread that then ends);
4. after 20 queries encoded as before (torch on two threads, on the calling thread), which
   leaves a pool behind for good, so it comes last.

It also times a query's encoding both ways (median of 20).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

from ragserve.config import Settings
from ragserve.generation.base import Generator, SamplingParams
from ragserve.generation.factory import create_generator
from ragserve.retrieval.encoders import TorchMiniLM, load_encoder

PROMPT = "The history of the Python programming language begins in the late 1980s. " * 10
QUERIES = [f"how do I read a json file, question {i}" for i in range(20)]


async def decode_ms(generator: Generator, tag: str) -> float:
    """Median milliseconds per token after the first, over 3 generations."""
    runs = []
    for rep in range(3):
        first, n = 0.0, 0
        params = SamplingParams(max_tokens=100, ignore_eos=True)
        async for chunk in generator.generate(f"{PROMPT}({tag} {rep})", params):
            if not first:
                first = time.perf_counter()
            n += len(chunk.token_ids)
        runs.append(1000 * (time.perf_counter() - first) / (n - 1))
    return round(statistics.median(runs), 2)


def query_ms(encode: Any) -> float:
    times = []
    for q in QUERIES:
        t0 = time.perf_counter()
        encode(q)
        times.append(1000 * (time.perf_counter() - t0))
    return round(statistics.median(times), 2)


async def measure() -> dict[str, Any]:
    generator = create_generator(Settings.load())
    encoder = load_encoder()
    assert isinstance(encoder, TorchMiniLM)
    tokenizer = encoder._tokenizer
    try:
        rows: dict[str, Any] = {"before torch ran": await decode_ms(generator, "a")}
        one = query_ms(encoder.encode_query)
        rows["after 20 queries, one thread (now)"] = await decode_ms(generator, "b")
        encoder.encode([f"passage {i} about reading and writing files" for i in range(200)])
        rows["after a 200-passage corpus on its own thread (now)"] = await decode_ms(generator, "c")
        two = query_ms(lambda q: encoder._run([tokenizer.encode(q).ids]))
        rows["after 20 queries, two threads on the calling thread (before)"] = await decode_ms(
            generator, "d"
        )
    finally:
        await generator.aclose()
    return {
        "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores",
        "decode_ms_per_token": rows,
        "query_encode_ms": {"one thread (now)": one, "two threads (before)": two},
    }


def markdown(result: dict[str, Any]) -> str:
    base = result["decode_ms_per_token"]["before torch ran"]
    lines = [
        "## The query encoder beside the model (libgomp thread pools)",
        "",
        f"{result['machine']}; bundled GGUF and encoder in one process; "
        "`python -m benchmarks.omp_pools`; one run, steps in this order.",
        "",
        "| after | ms per decoded token | vs. before torch ran |",
        "|---|---|---|",
    ]
    for name, ms in result["decode_ms_per_token"].items():
        lines.append(f"| {name} | {ms} | {ms / base:.2f}× |")
    q = result["query_encode_ms"]
    lines += [
        "",
        "| query encoding | ms (median of 20) |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in q.items()),
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args()
    result = asyncio.run(measure())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "omp_pools.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "omp_pools.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
