"""Fan-out overhead of sharded retrieval (issue 15): the same queries, side by side in one run,
through the unsharded index, three shards in this process, and three shards on Ray Serve (one
replica each, on a local Ray instance), at the same k. Every sharded answer is checked against
the unsharded one (ids and scores).

The corpus is NQ's (``--data``; the shared evaluation data), the queries its questions.

    python -m benchmarks.shards --data ../shared/data/nq --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import write_results
from benchmarks.operations import pct
from ragserve.indexing import build_from_file, load_index
from ragserve.retrieval.shards import ShardOptions

SHARDS = 3
RETRIEVERS = ("bm25", "dense")


def queries(data: Path, n: int) -> list[str]:
    """The first ``n`` questions (``questions.jsonl``) or BEIR queries (``queries.jsonl``)."""
    path = data / "questions.jsonl"
    if not path.is_file():
        path = data / "queries.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line]
    return [r.get("question") or r["text"] for r in rows[:n]]


def timed(retriever: Any, qs: list[str], k: int, batch: int) -> tuple[list[float], list[Any]]:
    """Per-call latencies (ms) for calls of ``batch`` queries, and the answers."""
    latencies, answers = [], []
    for i in range(0, len(qs), batch):
        t0 = time.perf_counter()
        answers += retriever.search(qs[i : i + batch], k)
        latencies.append((time.perf_counter() - t0) * 1000)
    return latencies, answers


def run(data: Path, n: int, k: int) -> dict[str, Any]:
    import ray
    from ray import serve

    from ragserve.retrieval.ray_shards import connector

    qs = queries(data, n)
    root = Path(tempfile.mkdtemp(prefix="shards-bench-"))
    corpus = data / "corpus.jsonl"
    for name, shards in (("whole", 1), ("split", SHARDS)):
        build_from_file(corpus, name, root, retrievers=list(RETRIEVERS), shards=shards,
                        progress=False)  # fmt: skip
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level="ERROR")
    setups = {
        "unsharded": load_index(root, "whole"),
        "in-process shards": load_index(root, "split"),
        "Ray Serve shards": load_index(
            root, "split", shards=ShardOptions(connector("local", cpus=0.1), timeout=30)
        ),
    }
    rows = []
    try:
        for retriever in RETRIEVERS:
            for setup in setups.values():  # warm: numba, faiss, the encoder's query cache
                setup.retrievers[retriever].search(qs[:8], k)
            for batch in (1, 16):
                ref = None
                for label, setup in setups.items():
                    lat, answers = timed(setup.retrievers[retriever], qs, k, batch)
                    ref = answers if ref is None else ref
                    rows.append({
                        "retriever": retriever, "setup": label, "batch": batch, "k": k,
                        "calls": len(lat), "p50_ms": pct(lat, 0.5), "p99_ms": pct(lat, 0.99),
                        "mean_ms": round(statistics.fmean(lat), 3),
                        "identical_to_unsharded": answers == ref,
                    })  # fmt: skip
        passages = len(setups["unsharded"].docstore)
    finally:
        for setup in setups.values():
            setup.close()
        serve.shutdown()
        ray.shutdown()
    base = {(r["retriever"], r["batch"]): r for r in rows if r["setup"] == "unsharded"}
    for r in rows:
        b = base[(r["retriever"], r["batch"])]
        r["added_p50_ms"] = round(r["p50_ms"] - b["p50_ms"], 3)
        r["p50_ratio"] = round(r["p50_ms"] / b["p50_ms"], 2)
    return {
        "benchmark": "shards",
        "data": str(data.name),
        "passages": passages,
        "queries": len(qs),
        "shards": SHARDS,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "ray": ray.__version__,
        "rows": rows,
        "identical_outputs": all(r["identical_to_unsharded"] for r in rows),
    }


def markdown(res: dict[str, Any]) -> str:
    lines = [
        "# Sharded retrieval: fan-out overhead",
        "",
        f"{res['data']}: {res['passages']} passages, {res['queries']} queries, "
        f"{res['shards']} shards, one replica each, on {res['machine']['cpus']} CPUs; "
        f"Ray {res['ray']}. Same queries, same k, side by side in one run.",
        f"Sharded answers identical to unsharded (ids and scores): **{res['identical_outputs']}**.",
        "",
        "| retriever | queries per call | setup | p50 ms | p99 ms | added p50 ms | p50 ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in res["rows"]:
        lines.append(
            f"| {r['retriever']} | {r['batch']} | {r['setup']} | {r['p50_ms']} | {r['p99_ms']}"
            f" | {r['added_p50_ms']} | {r['p50_ratio']}× |"
        )
    lines += ["", "Re-run: `python -m benchmarks.shards --data ../shared/data/nq`", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("../shared/data/nq"))
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = ap.parse_args()
    res = run(args.data, args.queries, args.k)
    write_results(args.out, "shards", res, markdown(res))


if __name__ == "__main__":
    main()
