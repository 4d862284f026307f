"""Shared fixtures: a small real corpus, the real bundled model, a real server on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]

CORPUS = [
    {"id": "py-nonlocal", "title": "nonlocal statement",
     "text": "The nonlocal statement causes the listed identifiers to refer to previously bound "
             "variables in the nearest enclosing scope excluding globals."},
    {"id": "py-global", "title": "global statement",
     "text": "The global statement is a declaration which holds for the entire current code "
             "block. It means that the listed identifiers are to be interpreted as globals."},
    {"id": "py-json", "title": "json module",
     "text": "The json module encodes and decodes JSON. Use json.loads to parse a string and "
             "json.dumps to serialize an object to a JSON formatted string."},
    {"id": "py-gzip", "title": "gzip module",
     "text": "The gzip module provides a simple interface to compress and decompress files "
             "just like the GNU programs gzip and gunzip would."},
    {"id": "py-lambda", "title": "lambda expressions",
     "text": "Lambda expressions are used to create anonymous functions. The expression "
             "lambda parameters: expression yields a function object."},
]  # fmt: skip


TEXTS = [f"{r['title']}\n{r['text']}" for r in CORPUS]  # as retrievers see passages


def eval_retrieval(data: Path, index_dir: Path, retrievers: str, *extra: str) -> dict:
    """``ragserve eval retrieval`` as a user runs it; its metrics, from the JSON it writes."""
    from ragserve.cli import main

    out = index_dir / "metrics.json"
    args = ["--data", str(data), "--index-dir", str(index_dir), "--retrievers", retrievers]
    assert main(["eval", "retrieval", *args, *extra, "--json", str(out)]) == 0
    return json.loads(out.read_text())


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture
def corpus_file(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "corpus.jsonl", CORPUS)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The shared evaluation data; tests that need it skip with a reason where it is absent."""
    path = Path(os.environ.get("RAGSERVE_DATA", ROOT.parent / "shared" / "data"))
    if not path.is_dir():
        pytest.skip(f"evaluation data not found at {path} (set RAGSERVE_DATA)")
    return path


@pytest.fixture(scope="session")
def generator():
    """The real bundled Gemma 3 270M through llama.cpp, loaded once per test session."""
    from ragserve.generation.llama_cpp import LlamaCppGenerator

    return LlamaCppGenerator(n_ctx=2048)


@pytest.fixture(scope="session")
def demo_index_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real demo corpus (Python docs) indexed once per session."""
    from ragserve.corpus.demo import demo_documents, demo_source
    from ragserve.indexing import build_index, documents_checksum

    root = tmp_path_factory.mktemp("indexes")
    docs = demo_documents()
    source = {"source": demo_source(), "sha256": documents_checksum(docs)}
    build_index(docs, source, "python-docs", root, progress=False)
    return root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """uvicorn serving the real app on a loopback port in a background thread."""

    def __init__(self, app, start_timeout: float = 60) -> None:  # type: ignore[no-untyped-def]
        import uvicorn

        self.app = app
        self.start_timeout = start_timeout
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_until_complete, args=(self.server.serve(),), daemon=True
        )

    def run(self, coro):  # type: ignore[no-untyped-def]
        """Run ``coro`` on the server's event loop (where its engine lives); its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError(f"server did not start within {self.start_timeout} s")

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        if not self.thread.is_alive():
            self.loop.close()


@pytest.fixture(scope="session")
def llama_upstream() -> Iterator[str]:
    """llama.cpp's own OpenAI server (llama-cpp-python[server]) on loopback, serving the bundled
    GGUF: a real upstream for the ``openai`` backend. Started and stopped here."""
    import sys

    from ragserve.generation.models import bundled_gguf

    port = free_port()
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(bundled_gguf()),
           "--model_alias", "gemma-upstream", "--host", "127.0.0.1", "--port", str(port),
           "--n_ctx", "2048", "--logits_all", "true", "--verbose", "false",
           "--interrupt_requests", "false"]  # fmt: skip
    with upstream_process(cmd, f"http://127.0.0.1:{port}", timeout=90) as url:
        yield url


@contextlib.contextmanager
def upstream_process(
    cmd: list[str], url: str, *, timeout: float, env: dict[str, str] | None = None
) -> Iterator[str]:
    """Run an OpenAI-compatible server process on loopback until the block ends; ``url`` is its
    root, ready once ``/v1/models`` answers."""
    import subprocess

    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if httpx.get(f"{url}/v1/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{cmd[2]} did not start")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=60)


@pytest.fixture(scope="session")
def live_server(demo_index_dir: Path) -> Iterator[LiveServer]:
    """The real server: demo index, bundled model, loaded by the app's own lifespan."""
    from ragserve.config import Settings
    from ragserve.server.app import create_app

    settings = Settings(index_dir=demo_index_dir, index="python-docs", n_ctx=2048)
    with LiveServer(create_app(settings)) as server:
        yield server
