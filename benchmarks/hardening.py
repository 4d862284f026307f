"""Issue 8's acceptance, measured on a real server process: ``/health`` latency and server memory
while a client sends a 50 MB body, and how fast a dropped request frees the model.

    .venv/bin/python -m benchmarks.hardening   # needs the demo index (make index)

Writes ``benchmarks/results/hardening.{json,md}``.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import select
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

RESULTS = Path(__file__).parent / "results"
MB = 1 << 20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


class Probe:
    """Polls ``/health`` and the server's RSS every 20 ms until stopped."""

    def __init__(self, url: str, pid: int):
        self.url, self.pid = url, pid
        self.latencies: list[float] = []
        self.peak_rss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        with httpx.Client(timeout=60) as c:
            while not self._stop.is_set():
                t0 = time.perf_counter()
                c.get(f"{self.url}/health").raise_for_status()
                self.latencies.append(time.perf_counter() - t0)
                self.peak_rss = max(self.peak_rss, rss(self.pid))
                time.sleep(0.02)

    def __enter__(self) -> Probe:
        self._thread.start()
        while not self.latencies:
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        time.sleep(0.2)
        self._stop.set()
        self._thread.join()


def read_status(s: socket.socket) -> int:
    data = b""
    while b"\r\n" not in data:
        chunk = s.recv(4096)
        if not chunk:
            return 0
        data += chunk
    return int(data.split()[1])


def big_body(port: int, size: int, chunked: bool) -> dict[str, float | int]:
    """Send ``size`` bytes of JSON-ish body; stop when the server answers."""
    t0 = time.perf_counter()
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=120) as s:
        framing = b"Transfer-Encoding: chunked" if chunked else b"Content-Length: %d" % size
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n" + framing + b"\r\n\r\n")
        piece = b"a" * (256 << 10)
        while sent < size and not select.select([s], [], [], 0)[0]:
            try:
                s.sendall(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
            except OSError:
                break
            sent += len(piece)
        status = read_status(s)
    return {"status": status, "bytes_sent": sent, "seconds": round(time.perf_counter() - t0, 3)}


def dropped_request(url: str) -> dict[str, float]:
    body = {
        "messages": [{"role": "user", "content": "Write a long story about a dragon."}],
        "max_tokens": 1500,
        "temperature": 1.5,  # sampled with a fixed seed: runs to max_tokens, no repeat to cut
        "seed": 7,
        "rag": {"strategy": "none"},
    }
    with contextlib.suppress(httpx.ReadTimeout):  # the client gives up after 2 s
        httpx.post(f"{url}/v1/chat/completions", json=body, timeout=2)
    t0 = time.perf_counter()
    while httpx.get(f"{url}/health").json()["in_flight"]:
        time.sleep(0.02)
    freed = time.perf_counter() - t0
    t1 = time.perf_counter()
    short = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8}
    short["rag"] = {"strategy": "none"}
    httpx.post(f"{url}/v1/chat/completions", json=short, timeout=120)
    return {
        "freed_after_drop_s": round(freed, 3),
        "next_8_token_request_s": round(time.perf_counter() - t1, 3),
    }


def main() -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "ragserve.cli", "serve", "--port", str(port), "--n-ctx", "2048"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.2)
        base_rss = rss(proc.pid)
        runs = {}
        for name, size, chunked in [
            ("50MB_content_length", 50 * MB, False),
            ("50MB_chunked", 50 * MB, True),
            ("5MB_chunked", 5 * MB, True),
        ]:
            with Probe(url, proc.pid) as probe:
                outcome = big_body(port, size, chunked)
            lat = sorted(probe.latencies)
            runs[name] = {
                **outcome,
                "health_probes": len(lat),
                "health_p50_ms": round(1000 * statistics.median(lat), 2),
                "health_max_ms": round(1000 * lat[-1], 2),
                "server_rss_growth_mb": round((probe.peak_rss - base_rss) / MB, 1),
            }
        runs["dropped_non_streaming"] = dropped_request(url)
    finally:
        proc.terminate()
        proc.wait(30)
    report = {
        "benchmark": "hardening",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "body_limit_bytes": 1 << 20,
        **{f"{k}.{m}": v for k, r in runs.items() for m, v in r.items()},
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "hardening.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        "# Hardening: a large body and a dropped request (issue 8)",
        "",
        "A real `ragserve serve` process (demo index, bundled model, n_ctx 2048), body limit"
        " 1 MiB.",
        "`/health` was polled every 20 ms while the body was sent; server RSS sampled with it. The",
        "bytes the client got to send went into socket buffers: the server reads at most 1 MiB.",
        "Before the fix (issue 8): a 50 MB body kept `/health` waiting 40 s and grew the process",
        "by 2.4 GB; a dropped 4000-token request kept generating for 68 s.",
        "",
        "| body | status | bytes the client got to send | time to answer | /health p50"
        " | /health max | server RSS growth |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in ("50MB_content_length", "50MB_chunked", "5MB_chunked"):
        r = runs[name]
        lines.append(
            f"| {name} | {r['status']} | {r['bytes_sent'] / MB:.2f} MB | {r['seconds']} s"
            f" | {r['health_p50_ms']} ms | {r['health_max_ms']} ms"
            f" | {r['server_rss_growth_mb']} MB |"
        )
    d = runs["dropped_non_streaming"]
    lines += [
        "",
        "Dropped non-streaming request (`max_tokens` 1500, client gone after 2 s): the model was"
        f" free {d['freed_after_drop_s']} s after the drop was seen; the next 8-token request took"
        f" {d['next_8_token_request_s']} s.",
        "",
    ]
    (RESULTS / "hardening.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
