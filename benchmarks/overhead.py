"""Server overhead (issue 14): ragserve against llama.cpp's own ``llama-server`` on the same GGUF,
measured by ``ragserve bench serve``'s own code at 1, 4 and 8 concurrent streams, side by side in
one run; then, with retrieval on, what each retriever costs a request.

    python -m benchmarks.overhead --out benchmarks/results

Equal work: ``/v1/completions`` on both servers, the same prompts, greedy, exactly
``--max-tokens`` tokens each (``ignore_eos``), retrieval off (``ragserve-none``). Targets:
ragserve's output tokens/s at least 95% of llama-server's at each concurrency, and at most 10 ms
more TTFT at p50. Both servers run 8 sequences with every core; both are up for the whole run
and take turns level by level, never both busy.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.concurrency import TOPICS, start, wait_ready
from benchmarks.spec_load import free_port

LEVELS = (1, 4, 8)
RETRIEVERS = ("bm25", "dense", "hybrid", "fmindex", "seal")


def measure(url: str, streams: int, rounds: int, max_tokens: int, **kw: Any) -> dict[str, Any]:
    from ragserve.client import load

    prompts = [f"Here is a short explanation of {TOPICS[i % len(TOPICS)]} in Python:"
               for i in range(streams * rounds)]  # fmt: skip
    outcomes, duration = asyncio.run(
        load.run(url, prompts, concurrency=streams, max_tokens=max_tokens, progress=False, **kw)
    )
    res = load.summarize(outcomes, duration)
    keep = ("completed", "failed", "output_throughput", "request_throughput", "median_ttft_ms",
            "p99_ttft_ms", "median_itl_ms", "mean_e2el_ms", "total_output_tokens")  # fmt: skip
    return {k: res[k] for k in keep}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3, help="requests per stream per level")
    ap.add_argument("--repeats", type=int, default=3, help="passes over all levels")
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    retrieval: list[dict[str, Any]] = []
    kinds = ("llama-server", "ragserve")
    procs: dict[str, subprocess.Popen[bytes]] = {}
    urls: dict[str, str] = {}
    try:
        for kind in kinds:
            port = free_port()
            log = Path(tempfile.gettempdir()) / f"ragserve-overhead-{kind}.log"
            procs[kind] = start(kind, port, log)
            urls[kind] = f"http://127.0.0.1:{port}"
            wait_ready(urls[kind], procs[kind])

        def common(kind: str) -> dict[str, Any]:
            return {"endpoint": "completions", "ignore_eos": True, "rag": None,
                    "model": "ragserve-none" if kind == "ragserve" else None}  # fmt: skip

        for kind in kinds:
            measure(urls[kind], 2, 1, 8, **common(kind))  # warm-up
        # Both at each level, the first one alternating: a host that slows down mid-run
        # (this one is shared) weighs on both sides of each ratio, not on one server.
        for rep in range(args.repeats):
            for k, n in enumerate(LEVELS):
                for kind in kinds if (k + rep) % 2 == 0 else kinds[::-1]:
                    res = measure(urls[kind], n, args.rounds, args.max_tokens, **common(kind))
                    rows.append({"server": kind, "streams": n, "repeat": rep, **res})
        for r in ("none", *RETRIEVERS):
            rag = {"strategy": "none"} if r == "none" else {"strategy": "single", "retriever": r}
            res = measure(urls["ragserve"], 1, 4, 32, endpoint="chat", rag=rag, model="ragserve")
            retrieval.append({"retriever": r, **res})
    finally:
        for proc in procs.values():
            proc.terminate()
            proc.wait(timeout=60)
    # Each repeat's ragserve row against llama-server's of the same repeat and level (measured
    # back to back), then the median over repeats: one slow minute of the host moves one pair.
    ref = {(r["streams"], r["repeat"]): r for r in rows if r["server"] == "llama-server"}
    for r in rows:
        base = ref[r["streams"], r["repeat"]]
        r["tok_s_vs_llama_server"] = round(r["output_throughput"] / base["output_throughput"], 3)
        r["added_ttft_p50_ms"] = round(r["median_ttft_ms"] - base["median_ttft_ms"], 1)
    summary = []
    for n in LEVELS:
        for kind in kinds:
            mine = [r for r in rows if r["server"] == kind and r["streams"] == n]
            row = {"server": kind, "streams": n}
            for key in ("output_throughput", "median_ttft_ms", "p99_ttft_ms", "median_itl_ms",
                        "tok_s_vs_llama_server", "added_ttft_p50_ms"):  # fmt: skip
                row[key] = round(statistics.median(r[key] for r in mine), 3)
            row["ratios"] = [r["tok_s_vs_llama_server"] for r in mine]
            row["added_ttfts"] = [r["added_ttft_p50_ms"] for r in mine]
            summary.append(row)
    none = next(r for r in retrieval if r["retriever"] == "none")
    for r in retrieval:
        r["added_e2el_ms"] = round(r["mean_e2el_ms"] - none["mean_e2el_ms"], 1)
    res = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "date": time.strftime("%Y-%m-%d"), "max_tokens": args.max_tokens,
        "rounds": args.rounds, "repeats": args.repeats, "summary": summary, "rows": rows,
        "retrieval": retrieval,
    }  # fmt: skip
    (out / "overhead.json").write_text(json.dumps(res, indent=2) + "\n")
    lines = [
        "# Server overhead: ragserve against llama-server (issue 14)",
        "",
        f"`python -m benchmarks.overhead`, {res['machine']}, {res['date']}. Both on the bundled "
        f"GGUF, 8 sequences, every core; `/v1/completions`, greedy, exactly {args.max_tokens} "
        f"tokens (`ignore_eos`), retrieval off; {args.rounds} requests per stream; measured with "
        f"`ragserve bench serve`'s code. Both servers stay up; {args.repeats} passes over the "
        "levels, the two servers back to back at each, the first alternating; each ratio is "
        "ragserve against llama-server in the same pass, and the table gives the medians over "
        "passes (each pass's value in brackets).",
        "",
        "| streams | server | output tok/s | vs llama-server | TTFT p50 / p99 ms "
        "| added TTFT p50 ms | ITL p50 ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in summary:
        # The reference's own ratios are 1 by definition: its passes are not listed.
        ratios = "" if r["server"] == "llama-server" else f" ({', '.join(map(str, r['ratios']))})"
        added = (
            "" if r["server"] == "llama-server" else f" ({', '.join(map(str, r['added_ttfts']))})"
        )
        lines.append(
            f"| {r['streams']} | {r['server']} | {r['output_throughput']:.1f} "
            f"| {r['tok_s_vs_llama_server']}×{ratios} "
            f"| {r['median_ttft_ms']:.1f} / {r['p99_ttft_ms']:.1f} "
            f"| {r['added_ttft_p50_ms']}{added} | {r['median_itl_ms']:.1f} |"
        )
    lines += [
        "",
        "## What retrieval costs a request",
        "",
        "One stream, 4 chat requests each, `single` strategy with 4 passages and 32 tokens (the "
        "passages make the prompt longer, so the cost includes reading them); `none` is the same "
        "request without retrieval.",
        "",
        "| retriever | mean end-to-end ms | added ms | TTFT p50 ms |",
        "|---|---|---|---|",
    ]
    for r in retrieval:
        lines.append(f"| {r['retriever']} | {r['mean_e2el_ms']:.1f} | {r['added_e2el_ms']} "
                     f"| {r['median_ttft_ms']:.1f} |")  # fmt: skip
    (out / "overhead.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
