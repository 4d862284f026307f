"""The FastAPI application factory. Resources load in the lifespan, so import is cheap and tests
can pass a ready engine instead."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic.json_schema import models_json_schema

from ragserve import __version__
from ragserve.config import Settings
from ragserve.engine.core import Engine
from ragserve.engine.seal import with_seal
from ragserve.errors import IndexMismatchError
from ragserve.generation.factory import create_generator
from ragserve.indexing import LoadedIndex, load_index, open_manifest
from ragserve.retrieval.registry import with_hybrid
from ragserve.server import errors
from ragserve.server.limits import InFlightLimiter
from ragserve.server.middleware import BodyLimit, UnexpectedErrors
from ragserve.server.protocol import DOCUMENTED_REQUESTS
from ragserve.server.routes import chat, meta
from ragserve.server.state import ServerState

log = logging.getLogger("ragserve.server")


def load_engine(settings: Settings) -> tuple[Engine, LoadedIndex]:
    """Open the configured index and model (blocking: seconds for the model)."""
    generator = create_generator(settings)
    options = {"fmindex": {"tokenizer": generator}}
    try:
        index = load_index(settings.index_dir, settings.index, options=options)
    except IndexMismatchError as e:
        # The FM-index speaks another model's tokens: serve everything else, say why.
        log.warning("not loading the FM-index: %s", e.message)
        names = [
            r
            for r in open_manifest(settings.index_dir, settings.index)[1].retrievers
            if r != "fmindex"
        ]
        index = load_index(settings.index_dir, settings.index, names, options)
    retrievers = with_seal(with_hybrid(index.retrievers), generator)
    engine = Engine(retrievers, index.docstore, generator, settings.retriever)
    return engine, index


def create_app(settings: Settings | None = None, *, engine: Engine | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        index = None
        eng = engine
        if eng is None:
            eng, index = await asyncio.to_thread(load_engine, settings)
            log.info("serving index %s with %s", settings.index, eng.generator.model_name)
        app.state.ragserve = ServerState(settings, eng, InFlightLimiter(settings.max_queued), index)
        try:
            yield
        finally:
            if engine is None:
                await eng.generator.aclose()
                if index is not None:
                    index.close()

    app = FastAPI(title="ragserve", version=__version__, lifespan=lifespan)
    errors.install(app)
    app.include_router(chat.router)
    app.include_router(meta.router)
    app.add_middleware(UnexpectedErrors)
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)  # outermost: before any read
    app.openapi = lambda: openapi_document(app)  # type: ignore[method-assign]
    return app


def openapi_document(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document plus the wire models that routes parse themselves (chat bodies)."""
    if app.openapi_schema is None:
        doc = get_openapi(title=app.title, version=app.version, routes=app.routes)
        _, defs = models_json_schema(
            [(m, "validation") for m in DOCUMENTED_REQUESTS],
            ref_template="#/components/schemas/{model}",
        )
        schemas = doc.setdefault("components", {}).setdefault("schemas", {})
        schemas.update(defs["$defs"])
        state: ServerState | None = getattr(app.state, "ragserve", None)
        if state is not None:  # what this server serves, so clients and fuzzers see the choices
            _choices(schemas["ChatCompletionRequest"], "model", state.model_names())
            _choices(schemas["RagParams"], "retriever", list(state.engine.retrievers))
        app.openapi_schema = doc
    return app.openapi_schema


def _choices(schema: dict[str, Any], field: str, values: list[str]) -> None:
    prop = schema["properties"][field]
    prop.pop("anyOf", None)
    prop["enum"] = [*dict.fromkeys(values), None]
