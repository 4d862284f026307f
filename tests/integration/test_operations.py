"""Operating the server as a process (``ragserve serve --config``): several indexes, overload,
hot reload of a rebuilt index, and a graceful stop on SIGTERM. Traffic stays on 127.0.0.1 and
each test is bounded in requests and seconds; the longer runs are ``benchmarks/operations.py``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import CORPUS, free_port, write_jsonl

pytestmark = pytest.mark.integration

RIVERS = [
    {"id": "river-danube", "title": "Danube",
     "text": "The Danube flows through ten countries, from the Black Forest to the Black Sea."},
    {"id": "river-nile", "title": "Nile",
     "text": "The Nile is a major north-flowing river in northeastern Africa."},
]  # fmt: skip
WALRUS = {"id": "py-walrus", "title": "assignment expressions",
          "text": "The walrus operator := assigns a value inside a larger expression."}  # fmt: skip
ADMIN = "admin-key-0123456789"
RAGSERVE = str(Path(sys.executable).parent / "ragserve")


def build(root: Path, name: str, records: list[dict]) -> None:  # type: ignore[type-arg]
    """``ragserve index build`` as a user runs it (BM25 only: no encoder to load)."""
    corpus = write_jsonl(root / f"{name}-{len(records)}.jsonl", records)
    subprocess.run(
        [RAGSERVE, "index", "build", "--corpus", str(corpus), "--name", name,
         "--retrievers", "bm25", "--index-dir", str(root), "--quiet"],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip


@dataclass
class Served:
    url: str
    proc: subprocess.Popen  # type: ignore[type-arg]

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmRSS")


@contextlib.contextmanager
def serve(config: Path) -> Iterator[Served]:
    """``ragserve serve --config`` on a loopback port, ready once ``/health`` answers 200; the
    503s it answers while loading are checked on the way."""
    port = free_port()
    log = open(config.with_suffix(f".{port}.log"), "w")  # noqa: SIM115
    proc = subprocess.Popen(
        [RAGSERVE, "serve", "--config", str(config), "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url, seen = f"http://127.0.0.1:{port}", []
    try:
        deadline = time.monotonic() + 120
        while not seen or seen[-1] != 200:
            assert proc.poll() is None, Path(log.name).read_text()[-3000:]
            assert time.monotonic() < deadline, "server did not become ready"
            with contextlib.suppress(httpx.HTTPError):
                seen.append(httpx.get(f"{url}/health", timeout=2).status_code)
            time.sleep(0.02)
        assert set(seen) <= {200, 503}
        yield Served(url, proc)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
        log.close()


def write_config(path: Path, root: Path, **extra: object) -> Path:
    settings = {"index_dir": str(root), "index": "alpha", "indexes": ["beta"], "n_ctx": 1024,
                "admin_key": ADMIN, "slots": 4, **extra}  # fmt: skip
    lines = [f"{k} = {json.dumps(v)}" for k, v in settings.items()]
    lines += ["[presets.rivers]", 'strategy = "single"', 'index = "beta"', "k = 1"]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ops")
    build(root, "alpha", CORPUS)
    build(root, "beta", RIVERS)
    return root


@pytest.fixture(scope="module")
def server(root: Path) -> Iterator[Served]:
    with serve(write_config(root / "ops.toml", root, max_queued=2)) as s:
        yield s


def top_id(url: str, query: str, **body: object) -> str:
    r = httpx.post(f"{url}/v1/retrieve", json={"query": query, "k": 1, **body}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()["data"][0]["citations"][0]["id"]


def test_several_indexes_by_request_and_by_preset(server: Served) -> None:
    assert top_id(server.url, "walrus json") == "py-json"
    assert top_id(server.url, "Black Sea", index="beta") == "river-danube"
    chat = {"messages": [{"role": "user", "content": "Where does the Nile flow?"}], "max_tokens": 4}
    r = httpx.post(
        f"{server.url}/v1/chat/completions", json={**chat, "model": "rivers"}, timeout=60
    )
    assert [c["id"] for c in r.json()["citations"]] == ["river-nile"]
    cards = httpx.get(f"{server.url}/v1/indexes", timeout=10).json()["data"]
    assert {c["id"]: c["passages"] for c in cards} == {"alpha": 5, "beta": 2}


async def _closed_loop(url: str, clients: int, seconds: float, body: dict) -> list[httpx.Response]:  # type: ignore[type-arg]
    """``clients`` loops, each sending its next request when the last is answered."""
    out: list[httpx.Response] = []
    stop = time.monotonic() + seconds
    async with httpx.AsyncClient(timeout=60) as client:

        async def loop() -> None:
            while time.monotonic() < stop:
                out.append(await client.post(f"{url}/v1/chat/completions", json=body))

        await asyncio.gather(*(loop() for _ in range(clients)))
    return out


def test_overload_at_4x_admission_gets_only_200_and_503(server: Served) -> None:
    body = {"model": "ragserve-none", "messages": [{"role": "user", "content": "Say hi."}],
            "max_tokens": 16}  # fmt: skip
    asyncio.run(_closed_loop(server.url, 2, 1, body))  # warm up
    before = server.rss_mib()
    responses = asyncio.run(_closed_loop(server.url, 8, 6, body))  # admission limit is 2
    statuses = Counter(r.status_code for r in responses)
    assert set(statuses) == {200, 503}, statuses
    assert all(r.headers.get("retry-after") == "1" for r in responses if r.status_code == 503)
    assert all(
        r.json()["choices"][0]["message"]["content"] for r in responses if r.status_code == 200
    )
    time.sleep(1)
    assert server.rss_mib() - before < 100, (before, server.rss_mib())
    t0 = time.monotonic()
    assert httpx.get(f"{server.url}/health", timeout=5).json()["in_flight"] == 0
    assert time.monotonic() - t0 < 1


def test_rebuilt_index_is_swapped_in_during_a_closed_loop(server: Served, root: Path) -> None:
    """Zero failed requests across two rebuilds (admin route, then SIGHUP), answers switching."""
    assert top_id(server.url, "walrus operator") != "py-walrus"

    async def run() -> tuple[list[tuple[float, int, str]], list[float]]:
        seen: list[tuple[float, int, str]] = []
        stop = time.monotonic() + 9
        swaps: list[float] = []
        async with httpx.AsyncClient(timeout=60) as client:

            async def loop() -> None:
                while time.monotonic() < stop:
                    body = {"query": "walrus operator", "k": 1}
                    sent = time.monotonic()  # requests sent before a swap finish on the old build
                    r = await client.post(f"{server.url}/v1/retrieve", json=body)
                    top = r.json()["data"][0]["citations"][0]["id"] if r.status_code == 200 else ""
                    seen.append((sent, r.status_code, top))

            async def rebuild() -> None:
                await asyncio.sleep(1)
                await asyncio.to_thread(build, root, "alpha", [*CORPUS, WALRUS])
                headers = {"Authorization": f"Bearer {ADMIN}"}
                r = await client.post(f"{server.url}/admin/reload", headers=headers)
                assert r.json() == {"indexes": {"alpha": "reloaded", "beta": "unchanged"}}
                swaps.append(time.monotonic())
                await asyncio.sleep(2)
                await asyncio.to_thread(build, root, "alpha", CORPUS)
                t = time.monotonic()
                server.proc.send_signal(signal.SIGHUP)
                swaps.append(t)

            await asyncio.gather(loop(), loop(), rebuild())
        return seen, swaps

    seen, (first, second) = asyncio.run(run())
    assert len(seen) > 30 and {s for _, s, _ in seen} == {200}
    during = [top for t, _, top in seen if first < t < second]
    assert during and all(top == "py-walrus" for top in during[: len(during) // 2])
    assert seen[-1][2] != "py-walrus"  # the SIGHUP reload switched back


def test_sigterm_lets_8_streams_finish_then_exits_0(root: Path) -> None:
    config = write_config(root / "drain.toml", root, max_queued=16, slots=8)
    with serve(config) as s:
        body = {"model": "ragserve-none", "prompt": "Once upon a time", "max_tokens": 40,
                "stream": True}  # fmt: skip

        async def run() -> tuple[list[list[str]], list[int]]:
            started = asyncio.Semaphore(0)
            async with httpx.AsyncClient(timeout=120) as client:

                async def stream() -> list[str]:
                    lines = []
                    async with client.stream("POST", f"{s.url}/v1/completions", json=body) as r:
                        assert r.status_code == 200
                        async for line in r.aiter_lines():
                            if line.startswith("data: "):
                                if not lines:
                                    started.release()
                                lines.append(line[6:])
                    return lines

                tasks = [asyncio.create_task(stream()) for _ in range(8)]
                for _ in range(8):
                    await started.acquire()
                s.proc.send_signal(signal.SIGTERM)
                await asyncio.sleep(0.2)
                refused = [
                    (await client.get(f"{s.url}/health")).status_code,
                    (await client.post(f"{s.url}/v1/completions", json=body)).status_code,
                ]
                return list(await asyncio.gather(*tasks)), refused

        streams, refused = asyncio.run(run())
        assert refused == [503, 503]
        for lines in streams:
            assert lines[-1] == "[DONE]"
            assert json.loads(lines[-2])["choices"][0]["finish_reason"] == "length"
        assert s.proc.wait(timeout=60) == 0
