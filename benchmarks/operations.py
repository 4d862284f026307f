"""Operating the server under stress (issue 13's acceptance), on the demo corpus and the bundled
model, through ``ragserve serve --config`` as an operator runs it:

1. **Overload**: closed-loop clients at 4× the admission limit for 30 s. Every answer must be a
   200, or a 503 with ``Retry-After``; none may hang; the server's memory is sampled throughout.
2. **Hot reload**: a 60 s closed loop of RAG requests on a served index while it is rebuilt twice
   with ``ragserve index build`` (picked up once by ``POST /admin/reload``, once by SIGHUP).
   Zero requests may fail, and answers must switch to each new build.

    python -m benchmarks.operations --out benchmarks/results

Traffic goes to 127.0.0.1 only and is bounded by the durations above.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from benchmarks.concurrency import pct as percentile
from benchmarks.spec_load import free_port

RAGSERVE = str(Path(sys.executable).parent / "ragserve")
ADMIN = "bench-admin-key-0001"
# A document the demo corpus lacks: which build answers is read from whether it is retrieved.
PROBE = {"id": "probe-walrus", "title": "assignment expressions (probe)",
         "text": "The walrus operator := assigns a value to a name inside a larger expression, "
                 "as in while (chunk := f.read(4096)): process(chunk)."}  # fmt: skip
QUESTION = "What does the walrus operator := do?"


def build(root: Path, name: str, with_probe: bool) -> float:
    """``ragserve index build`` of the demo corpus (BM25), with or without the probe document."""
    from ragserve.corpus.demo import demo_documents

    corpus = root / f"{name}-{with_probe}.jsonl"
    docs = [{"id": d.id, "title": d.title, "text": d.text} for d in demo_documents()]
    docs += [PROBE] if with_probe else []
    corpus.write_text("".join(json.dumps(d) + "\n" for d in docs))
    t0 = time.perf_counter()
    subprocess.run(
        [RAGSERVE, "index", "build", "--corpus", str(corpus), "--name", name,
         "--retrievers", "bm25", "--index-dir", str(root), "--quiet"],
        check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    return time.perf_counter() - t0


@contextlib.contextmanager
def serve(config: Path) -> Iterator[tuple[str, subprocess.Popen]]:  # type: ignore[type-arg]
    port = free_port()
    log = config.with_suffix(".log").open("w")
    proc = subprocess.Popen(
        [RAGSERVE, "serve", "--config", str(config), "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(config.with_suffix(".log").read_text()[-2000:])
            time.sleep(0.1)
        yield url, proc
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
        log.close()


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def pct(xs: list[float], q: float) -> float | None:
    """``concurrency.pct``, rounded; ``None`` (JSON null) where there is nothing to rank."""
    return round(percentile(xs, q), 3) if xs else None


BODY = {"model": "ragserve", "messages": [{"role": "user", "content": QUESTION}], "max_tokens": 32}


async def overload(
    url: str, pid: int, clients: int, seconds: float, honour_retry_after: bool
) -> dict[str, Any]:
    """``clients`` closed loops; a refused one retries at once, or after ``Retry-After``."""
    body = BODY
    rows: list[tuple[int, float, bool]] = []
    memory: list[float] = []
    stop = time.monotonic() + seconds
    async with httpx.AsyncClient(timeout=120) as client:

        async def loop() -> None:
            while time.monotonic() < stop:
                t0 = time.perf_counter()
                r = await client.post(f"{url}/v1/chat/completions", json=body)
                rows.append((r.status_code, time.perf_counter() - t0, "retry-after" in r.headers))
                if honour_retry_after and r.status_code == 503:
                    await asyncio.sleep(float(r.headers["retry-after"]))

        async def sample() -> None:
            while time.monotonic() < stop:
                memory.append(rss_mib(pid))
                await asyncio.sleep(0.5)

        before = rss_mib(pid)
        await asyncio.gather(sample(), *(loop() for _ in range(clients)))
        await asyncio.sleep(2)
        after = rss_mib(pid)
        t0 = time.perf_counter()
        health = (await client.get(f"{url}/health")).json()
        health_s = time.perf_counter() - t0
    statuses = Counter(s for s, _, _ in rows)
    ok = [t for s, t, _ in rows if s == 200]
    refused = [t for s, t, _ in rows if s == 503]
    return {
        "clients": clients, "seconds": seconds, "honour_retry_after": honour_retry_after,
        "requests": len(rows),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "503_with_retry_after": sum(1 for s, _, h in rows if s == 503 and h),
        "answered_per_s": round(len(ok) / seconds, 2),
        "latency_200_p50_s": pct(ok, 0.5), "latency_200_p99_s": pct(ok, 0.99),
        "latency_503_p50_s": pct(refused, 0.5), "latency_503_p99_s": pct(refused, 0.99),
        "rss_before_mib": round(before, 1), "rss_peak_mib": round(max(memory), 1),
        "rss_after_mib": round(after, 1), "in_flight_after": health["in_flight"],
        "health_after_s": round(health_s, 4),
    }  # fmt: skip


async def hot_reload(
    url: str, proc: subprocess.Popen, root: Path, seconds: float
) -> dict[str, Any]:  # type: ignore[type-arg]
    body = {"model": "ragserve", "messages": [{"role": "user", "content": QUESTION}],
            "max_tokens": 16, "rag": {"index": "ops", "retriever": "bm25", "k": 2}}  # fmt: skip
    rows: list[tuple[float, float, int, bool]] = []  # sent, seconds, status, probe cited
    events: dict[str, float] = {}
    start = time.monotonic()
    stop = start + seconds
    async with httpx.AsyncClient(timeout=120) as client:

        async def loop() -> None:
            while time.monotonic() < stop:
                sent = time.monotonic()
                r = await client.post(f"{url}/v1/chat/completions", json=body)
                cited = r.status_code == 200 and any(
                    c["id"].startswith(PROBE["id"]) for c in r.json()["citations"]
                )
                rows.append((sent - start, time.monotonic() - sent, r.status_code, cited))

        async def rebuilds() -> None:
            await asyncio.sleep(seconds / 4)
            events["build_1_s"] = await asyncio.to_thread(build, root, "ops", True)
            r = await client.post(
                f"{url}/admin/reload", headers={"Authorization": f"Bearer {ADMIN}"}
            )
            events["reload_1"] = time.monotonic() - start
            events["reload_1_answer"] = r.json()
            await asyncio.sleep(seconds / 4)
            events["build_2_s"] = await asyncio.to_thread(build, root, "ops", False)
            events["reload_2"] = time.monotonic() - start
            proc.send_signal(signal.SIGHUP)

        await asyncio.gather(loop(), loop(), loop(), loop(), rebuilds())

    def phase(lo: float, hi: float) -> dict[str, Any]:
        got = [r for r in rows if lo <= r[0] < hi]
        return {
            "requests": len(got),
            "cites_probe": sum(1 for r in got if r[3]),
            "latency_p50_s": pct([r[1] for r in got], 0.5),
            "latency_p99_s": pct([r[1] for r in got], 0.99),
        }

    r1, r2 = events["reload_1"], events["reload_2"]
    first_probe = min((r[0] for r in rows if r[3]), default=float("nan"))
    last_probe = max((r[0] for r in rows if r[3]), default=float("nan"))
    return {
        "seconds": seconds, "clients": 4, "requests": len(rows),
        "failed": sum(1 for r in rows if r[2] != 200),
        "statuses": dict(Counter(str(r[2]) for r in rows)),
        "build_1_s": round(events["build_1_s"], 2), "build_2_s": round(events["build_2_s"], 2),
        "reload_1_answer": events["reload_1_answer"],
        "before": phase(0, r1 - 5), "after_reload_1": phase(r1, r2 - 5),
        "after_sighup": phase(r2 + 2, seconds),
        "probe_first_sent_after_reload_1_s": round(first_probe - r1, 3),
        "probe_last_sent_after_sighup_s": round(last_probe - r2, 3),
    }  # fmt: skip


def markdown(res: dict[str, Any]) -> str:
    h = res["hot_reload"]
    lines = [
        "# Operations: overload and hot reload (issue 13)",
        "",
        f"`python -m benchmarks.operations`, {res['machine']}, {res['date']}. The server is "
        "`ragserve serve --config` on the demo index and the bundled model; clients on loopback.",
        "",
        f"## Overload: closed-loop clients against an admission limit of {res['max_queued']}",
        "",
        "`ragserve` preset (hybrid retrieval, 4 passages, 32 tokens), one question. The first row "
        "is the baseline at the limit; the others send 4× as many clients, whose refused requests "
        "retry at once (the harshest case: a tight loop of refusals competing for the same two "
        "cores) or after `Retry-After`. RSS is sampled every 0.5 s, after a warm-up.",
        "",
        "| clients | refused retry | requests | statuses | 503 with Retry-After | answered/s "
        "| 200 p50 / p99 s | 503 p50 / p99 s | RSS before / peak / after MiB | in flight after "
        "| `/health` after s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for o in res["overload"]:
        retry = "after Retry-After" if o["honour_retry_after"] else "at once"
        retry = retry if o["clients"] > res["max_queued"] else "—"
        lines.append(
            f"| {o['clients']} | {retry} | {o['requests']} | {o['statuses']} "
            f"| {o['503_with_retry_after']} | {o['answered_per_s']} "
            f"| {o['latency_200_p50_s']} / {o['latency_200_p99_s']} "
            f"| {o['latency_503_p50_s'] or '—'} / {o['latency_503_p99_s'] or '—'} "
            f"| {o['rss_before_mib']} / {o['rss_peak_mib']} / {o['rss_after_mib']} "
            f"| {o['in_flight_after']} | {o['health_after_s']} |"
        )
    lines += [
        "",
        f"## Hot reload: {h['clients']} clients, {h['seconds']:g} s closed loop, two rebuilds",
        "",
        f"Requests {h['requests']}, failed **{h['failed']}** (statuses {h['statuses']}). "
        f"Rebuilds took {h['build_1_s']} s and {h['build_2_s']} s (`ragserve index build`); "
        f"the first was picked up by `POST /admin/reload` ({h['reload_1_answer']}), the second by "
        "SIGHUP.",
        "",
        "| phase (by time sent) | requests | citing the probe document | p50 s | p99 s |",
        "|---|---|---|---|---|",
    ]
    for name, label in [("before", "first build"), ("after_reload_1", "after the admin reload"),
                        ("after_sighup", "after SIGHUP (probe removed)")]:  # fmt: skip
        p = h[name]
        lines.append(f"| {label} | {p['requests']} | {p['cites_probe']} "
                     f"| {p['latency_p50_s']} | {p['latency_p99_s']} |")  # fmt: skip
    lines += [
        "",
        f"The first request citing the probe was sent {h['probe_first_sent_after_reload_1_s']} s "
        f"after the admin reload returned; the last one {h['probe_last_sent_after_sighup_s']} s "
        "after SIGHUP (the reload it triggers runs in the background).",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--index-dir", default="indexes", help="holds the demo index (python-docs)")
    ap.add_argument("--max-queued", type=int, default=4)
    ap.add_argument("--overload-seconds", type=float, default=30)
    ap.add_argument("--reload-seconds", type=float, default=60)
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        demo = Path(args.index_dir).resolve() / "python-docs"
        (root / "python-docs").symlink_to(demo)
        build(root, "ops", False)
        config = root / "ragserve.toml"
        config.write_text(
            f'index_dir = "{root}"\nindex = "python-docs"\nindexes = ["ops"]\n'
            f'max_queued = {args.max_queued}\nadmin_key = "{ADMIN}"\n'
        )
        with serve(config) as (url, proc):
            res: dict[str, Any] = {
                "machine": f"{platform.machine()}, {os.cpu_count()} cores",
                "date": time.strftime("%Y-%m-%d"),
                "max_queued": args.max_queued,
            }
            n, secs = args.max_queued, args.overload_seconds
            asyncio.run(overload(url, proc.pid, n, 10, False))  # warm-up: caches, buffers
            res["overload"] = [
                asyncio.run(overload(url, proc.pid, clients, secs, honour))
                for clients, honour in [(n, False), (4 * n, False), (4 * n, True)]
            ]
            res["hot_reload"] = asyncio.run(hot_reload(url, proc, root, args.reload_seconds))
        res["exit_code_after_sigterm"] = proc.returncode
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "operations.json").write_text(json.dumps(res, indent=2) + "\n")
    (out / "operations.md").write_text(markdown(res))
    print(markdown(res))


if __name__ == "__main__":
    main()
