"""RaLMSpec under load (issue 11): concurrent ``ralm`` requests through the real HTTP server, with
and without speculation and cross-request search batching, side by side in one run.

    python -m benchmarks.spec_load --distractors 5000000 --out benchmarks/results

The server runs in this process (uvicorn on 127.0.0.1, a port of its own per configuration)
because its retriever is the evaluation index plus synthetic distractor passages, built here as
``ragserve bench spec`` builds them. Each configuration answers the same questions, at most
``--concurrency`` at a time, on a cold prefix cache; answers are compared across configurations
(greedy and batch-invariant, so they must all be equal).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import threading
import time
from pathlib import Path
from typing import Any

import httpx

CONFIGS = {  # name: (speculative, cross-request batching)
    "neither": (False, False),
    "batching": (False, True),
    "speculation": (True, False),
    "both": (True, True),
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ThreadServer:
    """uvicorn serving ``app`` on a loopback port from a background thread."""

    def __init__(self, app: Any):
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ThreadServer:
        self.thread.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError("server did not start")

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


async def load(url: str, questions: list[str], retriever: str, speculative: bool,
               concurrency: int, max_tokens: int) -> dict[str, Any]:  # fmt: skip
    slots = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:

        async def one(q: str) -> tuple[float, str, int]:
            async with slots:
                t = time.perf_counter()
                r = await client.post("/v1/chat/completions", json={
                    "model": "ragserve", "max_tokens": max_tokens,
                    "messages": [{"role": "user", "content": q}],
                    "rag": {"strategy": "ralm", "retriever": retriever,
                            "speculative": speculative},
                })  # fmt: skip
                r.raise_for_status()
                body = r.json()
                return (time.perf_counter() - t, body["choices"][0]["message"]["content"],
                        body["usage"]["completion_tokens"])  # fmt: skip

        t0 = time.perf_counter()
        done = await asyncio.gather(*(one(q) for q in questions))
        wall = time.perf_counter() - t0
    latencies = sorted(d[0] for d in done)
    tokens = sum(d[2] for d in done)
    return {
        "wall_s": round(wall, 2),
        "requests_per_s": round(len(done) / wall, 3),
        "tokens_per_s": round(tokens / wall, 2),
        "p50_latency_s": round(latencies[len(latencies) // 2], 2),
        "max_latency_s": round(latencies[-1], 2),
        "answers": [d[1] for d in done],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", help="QA folder (default: $RAGSERVE_DATA/hotpotqa)")
    ap.add_argument("--retriever", default="dense", choices=["dense", "hnsw", "bm25"])
    ap.add_argument("--distractors", type=int, default=5_000_000)
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args()

    from ragserve.config import Settings
    from ragserve.engine.batcher import BatchStats
    from ragserve.engine.core import Engine
    from ragserve.eval.datasets import load_dataset
    from ragserve.eval.report import open_eval_index
    from ragserve.eval.spec import bench_retriever
    from ragserve.generation.factory import create_generator
    from ragserve.server.app import create_app

    settings = Settings.load()
    dataset = load_dataset(Path(args.data) if args.data else settings.data_dir / "hotpotqa")
    index = open_eval_index(dataset, settings.index_dir, ["bm25", "dense"])
    generator = create_generator(settings)
    retriever, docs = bench_retriever(index, args.retriever, args.distractors)
    # Not the first questions, which ``bench spec`` measures one at a time.
    questions = [q for _, q in dataset.queries[100 : 100 + args.requests]]
    rows: dict[str, Any] = {}
    try:
        for name, (speculative, batching) in CONFIGS.items():
            engine = Engine({args.retriever: retriever}, docs, generator, args.retriever,
                            batch_searches=batching)  # fmt: skip
            with ThreadServer(create_app(settings, engine=engine)) as server:
                # A warm-up request (not counted), then a cold prefix cache for the measured ones.
                asyncio.run(load(server.url, [questions[0][::-1]], args.retriever, speculative,
                                 1, 8))  # fmt: skip
                asyncio.run(generator.reset_prefix_cache())
                getattr(retriever, "clear_query_cache", lambda: None)()
                engine.batchers[args.retriever].stats = BatchStats()
                rows[name] = asyncio.run(load(server.url, questions, args.retriever, speculative,
                                              args.concurrency, args.max_tokens))  # fmt: skip
                batcher = engine.batchers[args.retriever].stats
                rows[name]["retriever_calls"] = batcher.calls if batching else None
                rows[name]["queries_per_call"] = (
                    round(batcher.queries / batcher.calls, 2) if batching else None
                )
            print(name, {k: v for k, v in rows[name].items() if k != "answers"}, flush=True)
    finally:
        asyncio.run(generator.aclose())
        index.close()
    base = rows["neither"]
    for r in rows.values():
        r["speedup"] = round(r["requests_per_s"] / base["requests_per_s"], 3)
        r["answers_equal"] = sum(a == b for a, b in zip(r["answers"], base["answers"], strict=True))
    res = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "data": dataset.name, "retriever": args.retriever, "passages": len(retriever),
        "distractors": args.distractors, "requests": len(questions),
        "concurrency": args.concurrency, "max_tokens": args.max_tokens,
        "rows": {k: {f: v for f, v in r.items() if f != "answers"} for k, r in rows.items()},
    }  # fmt: skip
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "spec_load.json").write_text(json.dumps(res, indent=2) + "\n")
    (out / "spec_load.md").write_text(markdown(res))
    print(markdown(res))


def markdown(res: dict[str, Any]) -> str:
    lines = [
        "## RaLMSpec under load: concurrent `ralm` requests through the server (issue 11)",
        "",
        f"{res['machine']}; {res['retriever']} retriever over {res['passages']:,} passages "
        f"({res['distractors']:,} synthetic) of {res['data']}; {res['requests']} requests, "
        f"{res['concurrency']} at a time, up to {res['max_tokens']} tokens each, over HTTP on "
        "127.0.0.1; every configuration on a cold prefix cache, one run.",
        "",
        "```bash",
        f"python -m benchmarks.spec_load --retriever {res['retriever']} "
        f"--distractors {res['distractors']} --requests {res['requests']} "
        f"--concurrency {res['concurrency']}",
        "```",
        "",
        "| configuration | requests/s | tokens/s | p50 latency | max latency | speed-up "
        "| answers equal to `neither` | batched retriever calls | queries per call |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in res["rows"].items():
        calls = "—" if r["retriever_calls"] is None else r["retriever_calls"]
        width = "—" if r.get("queries_per_call") is None else r["queries_per_call"]
        lines.append(
            f"| {name} | {r['requests_per_s']} | {r['tokens_per_s']} | {r['p50_latency_s']} s "
            f"| {r['max_latency_s']} s | {r['speedup']}× | {r['answers_equal']}/{res['requests']} "
            f"| {calls} | {width} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
