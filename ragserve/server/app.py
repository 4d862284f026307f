"""The FastAPI application factory. The model and indexes load in the background once the server
is up, so ``/health`` can answer 503 until they are ready; tests can pass a ready engine."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic.json_schema import models_json_schema

from ragserve import __version__
from ragserve.config import Settings
from ragserve.engine.core import Engine
from ragserve.engine.seal import with_seal
from ragserve.errors import IndexMismatchError, RagServeError
from ragserve.generation.base import Generator
from ragserve.generation.factory import create_generator
from ragserve.indexing import LoadedIndex, load_index, open_manifest
from ragserve.retrieval.registry import with_hybrid
from ragserve.retrieval.shards import ShardOptions, open_local
from ragserve.server import errors
from ragserve.server.auth import RateLimits
from ragserve.server.indexes import IndexSet
from ragserve.server.limits import InFlightLimiter
from ragserve.server.metrics import Metrics, RequestMetrics
from ragserve.server.middleware import BodyLimit, UnexpectedErrors
from ragserve.server.protocol import DOCUMENTED_REQUESTS, RetrieveRequest
from ragserve.server.routes import admin, generate, meta, retrieve
from ragserve.server.state import ServerState

log = logging.getLogger("ragserve.server")


def shard_options(settings: Settings) -> ShardOptions:
    """How sharded indexes are reached: Ray Serve with ``--ray``, else loaded in-process."""
    if settings.ray_address:
        from ragserve.retrieval.ray_shards import connector

        connect = connector(settings.ray_address, settings.shard_replicas, settings.shard_cpus)
    else:
        connect = open_local
    return ShardOptions(connect, settings.shard_timeout, settings.shard_failure)


def open_engine(settings: Settings, generator: Generator, name: str) -> tuple[Engine, LoadedIndex]:
    """Open one index for ``generator`` (blocking: seconds for a large index)."""
    options = {"fmindex": {"tokenizer": generator}}
    shards = shard_options(settings)
    try:
        index = load_index(settings.index_dir, name, options=options, shards=shards)
    except IndexMismatchError as e:
        # The FM-index speaks another model's tokens: serve everything else, say why.
        log.warning("index %s: not loading the FM-index: %s", name, e.message)
        names = [r for r in open_manifest(settings.index_dir, name)[1].retrievers if r != "fmindex"]
        index = load_index(settings.index_dir, name, names, options, shards)
    retrievers = with_seal(with_hybrid(index.retrievers), generator)
    default = settings.retriever if name == settings.index else None
    engine = Engine(retrievers, index.docstore, generator, default)
    return engine, index


def load_engine(settings: Settings) -> tuple[Engine, LoadedIndex]:
    """The model and the default index (blocking: seconds for the model): the CLI's engine."""
    return open_engine(settings, create_generator(settings), settings.index)


def create_app(settings: Settings | None = None, *, engine: Engine | None = None) -> FastAPI:
    """``engine``: serve that ready engine as the default (and only) index, closed by the caller."""
    settings = settings or Settings.load()

    async def start(app: FastAPI) -> None:
        try:
            app.state.ragserve = await _load(settings, engine)
            log.info("ready: model %s, indexes %s", app.state.ragserve.generator.model_name,
                     ", ".join(app.state.ragserve.indexes.names()))  # fmt: skip
        except Exception as e:
            app.state.load_error = e.message if isinstance(e, RagServeError) else repr(e)
            log.exception("loading failed: %s", app.state.load_error)
            fatal: Callable[[], None] | None = getattr(app.state, "on_fatal", None)
            if fatal is not None:
                fatal()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.load_error = None
        loading = asyncio.create_task(start(app))
        try:
            yield
        finally:
            loading.cancel()
            with suppress(asyncio.CancelledError):
                await loading
            state: ServerState | None = getattr(app.state, "ragserve", None)
            if state is not None and engine is None:
                state.indexes.close()
                await state.generator.aclose()

    app = FastAPI(title="ragserve", version=__version__, lifespan=lifespan)
    errors.install(app)
    for module in (generate, retrieve, meta, admin):
        app.include_router(module.router)
    app.add_middleware(UnexpectedErrors)
    app.add_middleware(
        RequestMetrics,
        metrics=lambda: getattr(getattr(app.state, "ragserve", None), "metrics", None),
    )
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)  # outermost: before any read
    app.openapi = lambda: openapi_document(app)  # type: ignore[method-assign]
    return app


async def _load(settings: Settings, engine: Engine | None) -> ServerState:
    metrics = Metrics()
    if engine is None:
        generator = await asyncio.to_thread(create_generator, settings)
    else:
        generator = engine.generator

    def loader(name: str) -> tuple[Engine, LoadedIndex | None]:
        if engine is not None:
            eng, index = engine, None
        else:
            eng, index = open_engine(settings, generator, name)
        eng.on_search = metrics.searched
        return eng, index

    names = [settings.index] if engine is not None else settings.served_indexes()
    indexes = IndexSet(settings.index_dir, settings.index, loader)
    try:
        await indexes.load(names)
    except BaseException:
        indexes.close()
        if engine is None:
            await generator.aclose()
        raise
    limiter = InFlightLimiter(settings.max_queued)
    rates = RateLimits(settings.rate_limit, settings.rate_period)
    state = ServerState(settings, generator, indexes, limiter, rates, metrics)
    metrics.watch(lambda: limiter.in_flight, lambda: getattr(generator, "queue_depth", 0))
    return state


def openapi_document(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document plus the wire models that routes parse themselves (request bodies)."""
    if app.openapi_schema is None:
        doc = get_openapi(title=app.title, version=app.version, routes=app.routes)
        _, defs = models_json_schema(
            [(m, "validation") for m in (*DOCUMENTED_REQUESTS, RetrieveRequest)],
            ref_template="#/components/schemas/{model}",
        )
        schemas = doc.setdefault("components", {}).setdefault("schemas", {})
        schemas.update(defs["$defs"])
        state: ServerState | None = getattr(app.state, "ragserve", None)
        if state is not None:  # what this server serves, so clients and fuzzers see the choices
            models = state.model_names()
            retrievers = list(state.engine.retrievers)
            indexes = state.indexes.names()
            for name in ("ChatCompletionRequest", "CompletionRequest"):
                _choices(schemas[name], "model", models)
            for name in ("RagParams", "RetrieveRequest"):
                _choices(schemas[name], "retriever", retrievers)
                _choices(schemas[name], "index", indexes)
        app.openapi_schema = doc
    return app.openapi_schema


def _choices(schema: dict[str, Any], field: str, values: list[str]) -> None:
    prop = schema["properties"][field]
    prop.pop("anyOf", None)
    prop["enum"] = [*dict.fromkeys(values), None]
