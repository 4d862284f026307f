"""One vLLM engine for the whole directory: starting one on CPU takes a minute or more, so the
generator tests reach the engine of the server the HTTP tests talk to, on the server's own event
loop (vLLM's output task lives there)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import CORPUS, LiveServer


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """``ragserve serve --generator vllm`` over a small real index, on loopback."""
    from ragserve.config import Settings
    from ragserve.corpus.documents import Document
    from ragserve.indexing import build_index, documents_checksum
    from ragserve.server.app import create_app

    root = tmp_path_factory.mktemp("indexes")
    docs = [Document(r["id"], r["title"], r["text"]) for r in CORPUS]
    source = {"source": "tests", "sha256": documents_checksum(docs)}
    build_index(docs, source, "small", root, retrievers=["bm25"], progress=False)
    settings = Settings(index_dir=root, index="small", generator="vllm", n_ctx=2048)
    with LiveServer(create_app(settings), start_timeout=600) as live:
        yield live
