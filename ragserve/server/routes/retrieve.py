"""``POST /v1/retrieve``: passages for queries, scored, in the ``citations`` shape; no model."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, Request

from ragserve.errors import InputError
from ragserve.server.auth import api_key
from ragserve.server.protocol import RetrievalResult, RetrieveRequest, RetrieveResponse
from ragserve.server.routes.common import ERRORS, body_parser, documented_body
from ragserve.server.runner import citations_out
from ragserve.server.state import ServerState, get_state

router = APIRouter()
PARSE = body_parser(RetrieveRequest)


@router.post(
    "/v1/retrieve",
    openapi_extra=documented_body("RetrieveRequest"),
    responses=ERRORS,
)
async def retrieve(
    request: Request,
    body: RetrieveRequest = Depends(PARSE),
    state: ServerState = Depends(get_state),
    _: str = Depends(api_key),
) -> RetrieveResponse:
    if (body.query is None) == (body.queries is None):
        raise InputError("give exactly one of query or queries", param="query")
    request.state.strategy = "retrieve"
    state.indexes.get(body.index)  # 404 before admission
    state.admit()
    try:
        with state.indexes.lease(body.index) as served:
            engine = served.engine
            name = body.retriever or engine.default_retriever
            engine.retriever(name)  # 400 naming what is loaded
            engine.bind_loop()
            work = [engine.retrieve(q, body.k, name) for q in body.all_queries()]
            results = await asyncio.gather(*work)
    finally:
        state.release()
    return RetrieveResponse(
        index=served.name,
        retriever=name,
        data=[
            RetrievalResult(query=q, citations=citations_out(c))
            for q, c in zip(body.all_queries(), results, strict=True)
        ],
    )
