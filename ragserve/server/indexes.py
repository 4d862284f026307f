"""The indexes a server serves, each with its engine, swapped atomically when rebuilt.

A request leases the engine of its index for as long as it runs (a stream: to its last byte). A
reload loads the rebuilt index beside the served one, then swaps the name over in one assignment;
requests already running finish on the old engine, which is closed when the last of them ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ragserve.engine.core import Engine
from ragserve.errors import NotFoundError, RagServeError
from ragserve.indexing import LoadedIndex, index_path

log = logging.getLogger("ragserve.server")

# (index name) -> a ready engine and the index it serves (blocking: runs in a worker thread).
Loader = Callable[[str], tuple[Engine, LoadedIndex | None]]


def version(root: Path, name: str) -> tuple[int, int] | None:
    """What identifies one build of an index: a rebuild swaps a new folder (and manifest) in."""
    try:
        st = (index_path(root, name) / "manifest.json").stat()
    except (OSError, RagServeError):
        return None
    return st.st_ino, st.st_mtime_ns


@dataclass
class Served:
    """One build of one index, in service or retired."""

    name: str
    engine: Engine
    index: LoadedIndex | None
    version: tuple[int, int] | None
    users: int = 0
    retired: bool = False
    loaded_at: float = field(default_factory=time.time)  # Unix time, as clients read it

    def close_if_unused(self) -> None:
        if self.retired and self.users == 0 and self.index is not None:
            self.index.close()
            log.info("closed a replaced build of index %s", self.name)


class IndexSet:
    def __init__(self, root: Path, default: str, loader: Loader):
        self.root = root
        self.default = default
        self.loader = loader
        self.served: dict[str, Served] = {}
        self._reloading = asyncio.Lock()

    async def load(self, names: list[str]) -> None:
        for name in names:
            self.served[name] = await self._open(name)

    async def _open(self, name: str) -> Served:
        before = version(self.root, name)
        engine, index = await asyncio.to_thread(self.loader, name)
        return Served(name, engine, index, before)

    def names(self) -> list[str]:
        return list(self.served)

    def get(self, name: str | None) -> Served:
        name = name or self.default
        if name not in self.served:
            raise NotFoundError(
                f"index {name!r} is not served; served: {', '.join(self.served)}",
                param="rag.index",
                code="index_not_found",
            )
        return self.served[name]

    @contextlib.contextmanager
    def lease(self, name: str | None) -> Iterator[Served]:
        """Hold an index's current build; see ``acquire``."""
        served = self.acquire(name)
        try:
            yield served
        finally:
            self.release(served)

    def acquire(self, name: str | None) -> Served:
        served = self.get(name)
        served.users += 1
        return served

    def release(self, served: Served) -> None:
        served.users -= 1
        served.close_if_unused()

    async def reload(
        self, names: list[str] | None = None, *, force: bool = False
    ) -> dict[str, str]:
        """Reload each named index (default: all) whose build changed on disk; what happened to
        each: ``reloaded``, ``unchanged``, or why it failed (the old build keeps serving)."""
        async with self._reloading:
            out: dict[str, str] = {}
            for name in names or self.names():
                old = self.get(name)
                if not force and version(self.root, name) == old.version:
                    out[name] = "unchanged"
                    continue
                try:
                    new = await self._open(name)
                except Exception as e:  # a half-built or broken folder: keep serving the old one
                    why = e.message if isinstance(e, RagServeError) else f"{type(e).__name__}: {e}"
                    log.error("reloading index %s failed; the old build serves on: %s", name, why)
                    out[name] = f"failed: {why}"
                    continue
                self.served[name] = new  # the swap: requests from here on get the new build
                old.retired = True
                old.close_if_unused()
                log.info("index %s reloaded (%d requests finish on the old build)", name, old.users)
                out[name] = "reloaded"
            return out

    def close(self) -> None:
        for served in self.served.values():
            served.retired = True
            served.close_if_unused()
