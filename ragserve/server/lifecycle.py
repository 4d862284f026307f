"""Serving with a graceful stop: SIGTERM (or Ctrl-C) stops admitting, with 503 on new requests
and on ``/health``, lets the requests in flight finish up to ``drain_timeout``, then exits 0.
A second signal exits at once. SIGHUP reloads indexes whose build changed on disk.

uvicorn's own handling closes the listening socket at once (new clients see connection refused,
not a 503 a load balancer understands) and re-raises the signal after shutdown (exit 143).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from types import FrameType

import uvicorn
from fastapi import FastAPI

from ragserve.server.state import ServerState

log = logging.getLogger("ragserve.server")


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app: FastAPI, drain_timeout: float):
        super().__init__(config)
        self.app = app
        self.drain_timeout = drain_timeout
        self.drain_until: float | None = None
        app.state.on_fatal = self._fatal
        self.failed = False

    def _state(self) -> ServerState | None:
        return getattr(self.app.state, "ragserve", None)

    def _fatal(self) -> None:
        self.failed = True
        self.should_exit = True

    async def startup(self, sockets: list | None = None) -> None:  # type: ignore[type-arg]
        await super().startup(sockets)
        loop = asyncio.get_running_loop()
        # No SIGHUP on some platforms; signal handlers only in the main thread.
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError, AttributeError):
            loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(self._reload()))

    async def _reload(self) -> None:
        state = self._state()
        if state is None:
            log.warning("SIGHUP while loading: nothing to reload yet")
            return
        log.info("SIGHUP: reloading changed indexes: %s", await state.indexes.reload())

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.drain_until is not None or self.should_exit:
            log.warning("second signal: exiting now")
            self.should_exit = self.force_exit = True
            return
        state = self._state()
        if state is None:  # still loading: nothing in flight
            self.should_exit = True
            return
        state.draining = True
        self.drain_until = time.monotonic() + self.drain_timeout
        log.info("draining: %d requests in flight, up to %g s", state.limiter.in_flight,
                 self.drain_timeout)  # fmt: skip

    async def on_tick(self, counter: int) -> bool:
        if await super().on_tick(counter):
            return True
        if self.drain_until is None:
            return False
        state = self._state()
        in_flight = state.limiter.in_flight if state is not None else 0
        if in_flight == 0:
            log.info("drained; exiting")
            return True
        if time.monotonic() >= self.drain_until:
            log.warning("drain deadline passed with %d requests in flight; exiting", in_flight)
            return True
        return False
