"""Sharded retrieval against the unsharded index: the same top-k, in-process and on Ray Serve.

The corpus is the real demo corpus (a slice, to keep the build short), indexed twice with the
real encoder: whole, and split into three shards. The Ray tests start a local Ray instance.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from ragserve.corpus.demo import demo_documents
from ragserve.errors import InputError
from ragserve.indexing import LoadedIndex, build_index, load_index, verify_index
from ragserve.retrieval.shards import (
    ShardedRetriever,
    ShardOptions,
    ShardUnavailableError,
    read_map,
)
from tests.conftest import LiveServer

pytestmark = pytest.mark.integration

QUERIES = [
    "how do I read a file line by line",
    "what does the nonlocal statement do",
    "sort a list in place",
    "exception raised when a key is missing from a dictionary",
    "string formatting with format specifiers",
    "create a temporary directory",
    "iterate over two lists in parallel",
    "compare floating point numbers",
    "decorator that caches function results",
    "how to use the with statement",
]
K = 10


class EncodeOnce:
    """The real encoder, encoding the corpus once for both builds (the slow part of a build)."""

    def __init__(self) -> None:
        from ragserve.retrieval.encoders import load_encoder

        self.encoder = load_encoder()
        self.name, self.dim = self.encoder.name, self.encoder.dim
        self.identity, self.encode_query = self.encoder.identity, self.encoder.encode_query
        self.done: dict[tuple[str, ...], np.ndarray] = {}

    def encode(self, texts: list[str], **kwargs: object) -> np.ndarray:
        key = tuple(texts)
        if key not in self.done:
            self.done[key] = self.encoder.encode(texts, **kwargs)
        return self.done[key]


@pytest.fixture(scope="module")
def roots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("shards")
    docs = demo_documents()[:40]  # 376 passages
    options = {"dense": {"encoder": EncodeOnce()}}
    for name, shards in (("whole", 1), ("split", 3)):
        build_index(docs, {"source": "demo slice"}, name, root, retrievers=["bm25", "dense"],
                    retriever_options=options, shards=shards, progress=False)  # fmt: skip
    return root


@pytest.fixture(scope="module")
def whole(roots: Path) -> Iterator[LoadedIndex]:
    index = load_index(roots, "whole")
    yield index
    index.close()


def assert_same(expected: LoadedIndex, got: dict, name: str) -> None:
    ref, sharded = expected.retrievers[name], got[name]
    assert len(sharded) == len(ref)
    want = ref.search(QUERIES, K)
    assert sharded.search(QUERIES, K) == want
    ids = [*[h.doc_id for row in want for h in row][::7], 0, len(ref) - 1]
    assert sharded.score(QUERIES[0], ids) == ref.score(QUERIES[0], ids)


def test_split_index_is_verified_and_mapped(roots: Path, whole: LoadedIndex) -> None:
    shards = read_map(roots / "split")
    assert shards is not None and [s.folder for s in shards] == ["shard-00", "shard-01", "shard-02"]
    ends = [s.offset + s.passages for s in shards]
    assert [s.offset for s in shards] == [0, *ends[:-1]]
    assert ends[-1] == len(whole.docstore)
    assert verify_index(roots, "split") == []
    assert all((roots / "split" / s.folder / "manifest.json").is_file() for s in shards)


def test_in_process_shards_give_the_unsharded_top_k(roots: Path, whole: LoadedIndex) -> None:
    split = load_index(roots, "split")
    try:
        assert all(isinstance(r, ShardedRetriever) for r in split.retrievers.values())
        for name in ("bm25", "dense"):
            assert_same(whole, split.retrievers, name)
    finally:
        split.close()


def test_fmindex_cannot_be_sharded(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="fmindex retriever cannot be sharded"):
        build_index(demo_documents()[:5], {}, "x", tmp_path, retrievers=["bm25", "fmindex"],
                    shards=2, progress=False)  # fmt: skip
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def ray_split(roots: Path) -> Iterator[LoadedIndex]:
    """The split index with each shard a Ray Serve application on a local Ray instance."""
    ray = pytest.importorskip("ray")
    from ray import serve

    from ragserve.retrieval.ray_shards import connector

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    how = ShardOptions(connector("local", replicas=1, cpus=0.1), timeout=3.0)
    index = load_index(roots, "split", shards=how)
    try:
        yield index
    finally:
        index.close()
        serve.shutdown()
        ray.shutdown()


def test_ray_shards_give_the_unsharded_top_k(ray_split: LoadedIndex, whole: LoadedIndex) -> None:
    for name in ("bm25", "dense"):
        assert_same(whole, ray_split.retrievers, name)


def test_killed_replica_is_restarted_and_never_hangs(
    ray_split: LoadedIndex, whole: LoadedIndex
) -> None:
    bm25 = ray_split.retrievers["bm25"]
    shard = bm25.shards[1]
    old_pid = shard.handle.pid.remote().result(timeout_s=30)
    os.kill(old_pid, signal.SIGKILL)
    want = whole.retrievers["bm25"].search(QUERIES, K)
    outcomes = []
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        started = time.monotonic()
        try:
            got = bm25.search(QUERIES, K)
        except ShardUnavailableError as e:
            assert "shard-01" in e.message
            outcomes.append("503")
        else:
            assert got == want
            outcomes.append("ok")
        assert time.monotonic() - started < bm25.timeout + 5  # bounded, never a hang
        if outcomes[-1] == "ok" and "503" in outcomes:
            break
        time.sleep(0.2)
    assert outcomes[-1] == "ok", outcomes
    assert shard.handle.pid.remote().result(timeout_s=30) != old_pid  # a new replica serves


def test_server_answers_from_ray_shards_and_503_while_one_is_down(
    ray_split: LoadedIndex, whole: LoadedIndex, generator
) -> None:  # type: ignore[no-untyped-def]
    from ragserve.config import Settings
    from ragserve.engine.core import Engine
    from ragserve.server.app import create_app

    engine = Engine(ray_split.retrievers, ray_split.docstore, generator, "bm25")
    settings = Settings(index_dir=ray_split.path.parent, index="split", n_ctx=2048)
    want = whole.retrievers["dense"].search(QUERIES[:3], 5)
    ids = [[p.external_id for p in whole.docstore.get([h.doc_id for h in row])] for row in want]
    body = {"queries": QUERIES[:3], "retriever": "dense", "k": 5}
    with LiveServer(create_app(settings, engine=engine)) as server:
        r = httpx.post(f"{server.url}/v1/retrieve", json=body, timeout=60)
        assert r.status_code == 200, r.text
        assert [[c["id"] for c in row["citations"]] for row in r.json()["data"]] == ids

        shard = ray_split.retrievers["dense"].shards[2]
        os.kill(shard.handle.pid.remote().result(timeout_s=30), signal.SIGKILL)
        statuses = []
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            r = httpx.post(f"{server.url}/v1/retrieve", json=body, timeout=30)
            statuses.append(r.status_code)
            if r.status_code == 503:
                assert "shard-02" in r.json()["error"]["message"]
                assert "Traceback" not in r.text
            else:
                assert r.status_code == 200, r.text
                assert [[c["id"] for c in row["citations"]] for row in r.json()["data"]] == ids
                if 503 in statuses:
                    break
            time.sleep(0.2)
        assert statuses[-1] == 200 and set(statuses) <= {200, 503}, statuses
