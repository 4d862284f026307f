"""Shards as Ray Serve deployments: one application per shard, replicas for throughput.

Ray Serve places the replicas, restarts one that dies and routes each call to a live replica; we
only fan out and merge (``shards.ShardedRetriever``). A call that finds no live replica waits in
Serve's queue, so every call is bounded by the shard timeout and then counts as a failed shard.
Index folders must be readable at the same path on every Ray node (a shared or replicated volume).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ray
from ray import serve

from ragserve.retrieval.shards import Connect, ShardClient, ShardIndex, ShardInfo

log = logging.getLogger("ragserve.retrieval")


@serve.deployment(health_check_period_s=2, health_check_timeout_s=10, max_ongoing_requests=16)
class ShardReplica:
    """One replica of one shard: loads the shard folder once, answers ``ShardIndex`` calls."""

    def __init__(self, folder: str, info: dict[str, Any]):
        self.index = ShardIndex.open(Path(folder), ShardInfo(**info))

    def search(self, retriever: str, payload: Any, k: int) -> list[list[tuple[int, float]]]:
        return self.index.search(retriever, payload, k)

    def score(self, retriever: str, payload: Any, doc_ids: Sequence[int]) -> list[float]:
        return self.index.score(retriever, payload, doc_ids)

    def pid(self) -> int:
        """The replica's process, for operators (and the test that kills it)."""
        return os.getpid()


class _Response:
    def __init__(self, response: Any):
        self._response = response

    def result(self, timeout: float) -> Any:
        try:
            return self._response.result(timeout_s=timeout)
        except TimeoutError:
            self._response.cancel()
            raise


class RayShard:
    def __init__(self, info: ShardInfo, handle: Any):
        self.info = info
        self.handle = handle

    def call(self, method: str, *args: Any) -> _Response:
        return _Response(getattr(self.handle, method).remote(*args))


def start(address: str) -> None:
    """Join the Ray cluster at ``address`` (``local``: start one in this process) and Serve."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # offline: Ray reports usage otherwise
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING}
        if address != "local":
            kwargs["address"] = address
        ray.init(**kwargs)
    serve.start(proxy_location="Disabled")


def app_name(folder: Path, shard: ShardInfo) -> str:
    return f"ragserve-{folder.name}-{shard.folder}"


def connector(address: str, replicas: int = 1, cpus: float = 1.0) -> Connect:
    """A ``ShardOptions.connect`` that deploys (or updates) each shard and returns its handle."""

    def connect(folder: Path, shards: Sequence[ShardInfo]) -> list[ShardClient]:
        start(address)
        clients: list[ShardClient] = []
        for s in shards:
            replica = ShardReplica.options(
                num_replicas=replicas, ray_actor_options={"num_cpus": cpus}
            )
            handle = serve.run(
                replica.bind(str(folder.resolve() / s.folder), s.__dict__),
                name=app_name(folder, s),
                route_prefix=None,
                logging_config={"enable_access_log": False},  # a log line per search costs
            )
            log.info("shard %s of %s: %d replica(s) on Ray Serve", s.folder, folder.name, replicas)
            clients.append(RayShard(s, handle))
        return clients

    return connect
