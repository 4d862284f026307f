"""llama.cpp's decode beside the other OpenMP users of the process: the query encoder (torch)
and a concurrent exact search (faiss).

    python -m benchmarks.omp_pools --out benchmarks/results

llama.cpp's threads meet at a libgomp barrier hundreds of times a token. A thread that arrives
spins ``GOMP_SPINCOUNT`` times, then sleeps; and once libgomp manages more threads than there
are cores (torch keeps a pool for every thread that ran it on two threads), it spins only about
a hundred times. Each part runs in a process of its own (libgomp reads the setting when it
loads), on the bundled GGUF, the bundled encoder and a Flat index of 1M random 384-d vectors:

1. spin counts: ms per decoded token (greedy, 100 tokens after a 150-token prompt, median of 3)
   alone, then while another thread runs searches back to back, and those searches per second;
2. the encoder, at ragserve's spin count: decode alone before torch has run, after 20 queries
   and a 200-passage corpus encoded the way the encoder does it, then after 20 queries encoded
   the way it did before (torch on two threads on the calling thread), which comes last
   because its pool stays; and a query's encoding time both ways (median of 20).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

SPIN_COUNTS = {
    "300,000 (libgomp's default)": "300000",
    "1,000 (ragserve's default)": "1000",
    "0 (never spin)": "0",
}
PROMPT = "The history of the Python programming language begins in the late 1980s. " * 10
QUERIES = [f"how do I read a json file, question {i}" for i in range(20)]


async def decode_ms(generator: Any, tag: str) -> float:
    """Median milliseconds per token after the first, over 3 generations."""
    from ragserve.generation.base import SamplingParams

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


async def spin_part() -> dict[str, Any]:
    """Decode alone and beside back-to-back exact searches."""
    import faiss
    import numpy as np

    from ragserve.config import Settings
    from ragserve.generation.factory import create_generator

    generator = create_generator(Settings.load())
    vectors = np.random.default_rng(0).standard_normal((1_000_000, 384), dtype=np.float32)
    index = faiss.IndexFlatIP(384)
    index.add(vectors)
    query = vectors[:1] + 0.1
    try:
        alone = await decode_ms(generator, "alone")
        done, stop = [0], threading.Event()

        def searches() -> None:
            while not stop.is_set():
                index.search(query, 10)
                done[0] += 1

        worker = threading.Thread(target=searches)
        t0 = time.perf_counter()
        worker.start()
        beside = await decode_ms(generator, "beside")
        stop.set()
        worker.join()
        rate = done[0] / (time.perf_counter() - t0)
    finally:
        await generator.aclose()
    return {"decode_alone": alone, "decode_beside_search": beside, "searches_per_s": round(rate, 2)}


async def encoder_part() -> dict[str, Any]:
    from ragserve.config import Settings
    from ragserve.generation.factory import create_generator
    from ragserve.retrieval.encoders import TorchMiniLM, load_encoder

    generator = create_generator(Settings.load())
    encoder = load_encoder()
    assert isinstance(encoder, TorchMiniLM)
    tokenizer = encoder._tokenizer
    try:
        rows: dict[str, Any] = {"before torch ran": await decode_ms(generator, "a")}
        one = query_ms(encoder.encode_query)
        encoder.encode([f"passage {i} about reading and writing files" for i in range(200)])
        rows["after 20 queries and a corpus, encoded as now"] = await decode_ms(generator, "b")
        two = query_ms(lambda q: encoder._run([tokenizer.encode(q).ids]))
        rows["after 20 queries on two threads, as before"] = await decode_ms(generator, "c")
    finally:
        await generator.aclose()
    return {
        "decode_ms_per_token": rows,
        "query_encode_ms": {"one thread (now)": one, "two threads (before)": two},
    }


def child(part: str, spin: str) -> dict[str, Any]:
    env = {**os.environ, "GOMP_SPINCOUNT": spin}
    run = subprocess.run(
        [sys.executable, "-m", "benchmarks.omp_pools", "--part", part],
        env=env, capture_output=True, text=True, check=True, timeout=900,
    )  # fmt: skip
    return json.loads(run.stdout.strip().splitlines()[-1])


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "## llama.cpp's decode beside torch and faiss (libgomp's spin count and thread pools)",
        "",
        f"{result['machine']}; bundled GGUF, bundled encoder, Flat index of 1M random vectors; "
        "`python -m benchmarks.omp_pools`; one run, each part in a process of its own.",
        "",
        "| GOMP_SPINCOUNT | ms per token, alone | ms per token, beside a search thread "
        "| searches/s beside decode |",
        "|---|---|---|---|",
    ]
    for name, r in result["spin_counts"].items():
        lines.append(
            f"| {name} | {r['decode_alone']} | {r['decode_beside_search']} | "
            f"{r['searches_per_s']} |"
        )
    enc = result["encoder"]
    base = enc["decode_ms_per_token"]["before torch ran"]
    lines += [
        "",
        "| encoder (spin count 1,000) | ms per token | vs. before torch ran |",
        "|---|---|---|",
    ]
    for name, ms in enc["decode_ms_per_token"].items():
        lines.append(f"| {name} | {ms} | {ms / base:.2f}× |")
    lines += ["", "| query encoding | ms (median of 20) |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in enc["query_encode_ms"].items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--part", choices=["spin", "encoder"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.part:
        part = spin_part if args.part == "spin" else encoder_part
        print(json.dumps(asyncio.run(part())))
        return
    result = {
        "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores",
        "spin_counts": {name: child("spin", n) for name, n in SPIN_COUNTS.items()},
        "encoder": child("encoder", "1000"),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "omp_pools.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "omp_pools.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
