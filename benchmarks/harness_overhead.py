"""What ``ragserve bench serve`` itself adds per request (issue 14's target: at most 1 ms at
200 requests/s against a trivial local endpoint).

The endpoint is a bare asyncio server in its own process that answers every request at once with
a fixed OpenAI chat stream (a role chunk, 16 text chunks, the finish and usage chunks, ``[DONE]``).
The same arrivals (Poisson, 200 requests/s) are sent twice, side by side in one run: by the
harness (``ragserve.client.load.run``: httpx, SSE parsing, per-chunk stamps) and by a minimal
reference client (one raw socket per request, bytes read to the end, nothing parsed). The
harness's overhead is the difference of their end-to-end latencies; its schedule lag (how late
each request leaves against its arrival time) is reported too.

    python -m benchmarks.harness_overhead --out benchmarks/results
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.concurrency import pct
from benchmarks.spec_load import free_port

SERVER = r"""
import asyncio, json, sys
base = {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "m"}
chunks = [{**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}]
chunks += [{**base, "choices": [{"index": 0, "delta": {"content": f" w{i}"}}]} for i in range(16)]
chunks += [{**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]},
           {**base, "choices": [], "usage": {"prompt_tokens": 8, "completion_tokens": 16,
                                             "total_tokens": 24}}]
body = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
body = body.encode()
models = json.dumps({"object": "list", "data": [{"id": "m", "object": "model"}]}).encode()

def response(payload, kind):
    head = (f"HTTP/1.1 200 OK\r\ncontent-type: {kind}\r\ncontent-length: {len(payload)}\r\n"
            "\r\n").encode()
    return head + payload

async def handle(reader, writer):
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            if length:
                await reader.readexactly(length)
            if head.startswith(b"GET /v1/models"):
                writer.write(response(models, "application/json"))
            else:
                writer.write(response(body, "text/event-stream"))
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()

async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", int(sys.argv[1]), backlog=1024)
    async with server:
        await server.serve_forever()

asyncio.run(main())
"""


async def reference(port: int, times: list[float]) -> list[float]:
    """End-to-end latency per request with the least a client can do: one connection per
    request, the request bytes, the response read to its last byte, nothing parsed."""
    payload = json.dumps({"messages": [{"role": "user", "content": "hi"}], "stream": True})
    request = (
        f"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: "
        f"application/json\r\ncontent-length: {len(payload)}\r\n\r\n{payload}"
    ).encode()
    out: list[float] = [0.0] * len(times)
    start = time.perf_counter()

    async def one(i: int, at: float) -> None:
        await asyncio.sleep(max(0.0, start + at - time.perf_counter()))
        t0 = time.perf_counter()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        await reader.readexactly(length)
        out[i] = time.perf_counter() - t0
        writer.close()

    await asyncio.gather(*(one(i, t) for i, t in enumerate(times)))
    return out


def ms(xs: list[float], q: float) -> float:
    return round(1000 * pct(xs, q), 3)


def main() -> None:
    from ragserve.client import load

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rate", type=float, default=200)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args()
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", SERVER, str(port)])
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "trivial server did not start"
                time.sleep(0.05)
        times = load.arrivals(args.requests, args.rate, 1.0, seed=0)
        ref = asyncio.run(reference(port, times))
        t0 = time.perf_counter()
        outcomes, duration = asyncio.run(
            load.run(url, ["hi"] * args.requests, model=None, max_tokens=16, rag=None,
                     request_rate=args.rate, progress=False)
        )  # fmt: skip
        wall = time.perf_counter() - t0
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    ok = [o for o in outcomes if o.ok]
    harness = [o.latency for o in ok]
    res: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "date": time.strftime("%Y-%m-%d"),
        "rate": args.rate,
        "requests": args.requests,
        "harness_completed": len(ok),
        "harness_achieved_rate": round(len(ok) / duration, 1),
        "offered_span_s": round(times[-1], 3),
        "harness_duration_s": round(duration, 3),
        "harness_wall_s": round(wall, 3),
        "reference_e2el_ms": {"p50": ms(ref, 0.5), "p90": ms(ref, 0.9), "p99": ms(ref, 0.99)},
        "harness_e2el_ms": {
            "p50": ms(harness, 0.5),
            "p90": ms(harness, 0.9),
            "p99": ms(harness, 0.99),
        },
        "harness_chunks_per_request": statistics.mean(len(o.itl) + 1 for o in ok),
    }
    res["overhead_p50_ms"] = round(
        res["harness_e2el_ms"]["p50"] - res["reference_e2el_ms"]["p50"], 3
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "harness_overhead.json").write_text(json.dumps(res, indent=2) + "\n")
    md = [
        "# Load harness overhead (issue 14)",
        "",
        f"`python -m benchmarks.harness_overhead`, {res['machine']}, {res['date']}: {args.requests}"
        f" Poisson arrivals at {args.rate:g} requests/s against a trivial local SSE endpoint (a"
        " bare asyncio server, 16 text chunks per answer), sent by the harness and by a minimal"
        " raw-socket client, side by side in one run.",
        "",
        "| client | completed | end-to-end p50 / p90 / p99 ms |",
        "|---|---|---|",
        f"| minimal raw socket (reference) | {len(ref)} | {res['reference_e2el_ms']['p50']} / "
        f"{res['reference_e2el_ms']['p90']} / {res['reference_e2el_ms']['p99']} |",
        f"| `ragserve bench serve` (aiohttp, SSE parsed, per-chunk stamps) | {len(ok)} | "
        f"{res['harness_e2el_ms']['p50']} / {res['harness_e2el_ms']['p90']} / "
        f"{res['harness_e2el_ms']['p99']} |",
        "",
        f"Harness overhead at p50: **{res['overhead_p50_ms']} ms per request**; it kept the offered"
        f" rate ({res['harness_achieved_rate']} requests/s achieved; the arrivals span"
        f" {res['offered_span_s']} s, the run took {res['harness_duration_s']} s).",
        "",
    ]
    (out / "harness_overhead.md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
