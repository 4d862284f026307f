"""What load balancers, operators and OpenAI clients probe: health, models, indexes, metrics."""

from __future__ import annotations

from dataclasses import asdict

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ragserve.server.auth import known_key
from ragserve.server.protocol import IndexCard, IndexList, ModelCard, ModelList
from ragserve.server.state import ServerState, get_state

router = APIRouter()


# HEAD too: load balancers and uptime checks often probe with it.
@router.head("/health", operation_id="health_head")
@router.get("/health", operation_id="health")
async def health(request: Request) -> JSONResponse:
    """Ready: 200 once the model and every index are loaded; 503 while loading or draining."""
    state: ServerState | None = getattr(request.app.state, "ragserve", None)
    if state is None:
        error = getattr(request.app.state, "load_error", None)
        body = {"status": "failed" if error else "loading", "error": error}
        return JSONResponse(body, 503, headers={"Retry-After": "1"})
    default = state.indexes.get(None)
    body = {
        "status": "draining" if state.draining else "ok",
        "model": state.generator.model_name,
        "index": default.name,
        "indexes": state.indexes.names(),
        "passages": len(default.engine.docstore),
        "retrievers": list(default.engine.retrievers),
        "in_flight": state.limiter.in_flight,
    }
    return JSONResponse(body, 503 if state.draining else 200)


@router.get("/health/live", operation_id="live")
async def live() -> dict[str, str]:
    """Alive: the process answers (a liveness probe; loading is not a reason to restart)."""
    return {"status": "alive"}


def _cards(state: ServerState) -> list[ModelCard]:
    root = state.generator.model_name
    cards = [
        ModelCard(
            id=name,
            root=root,
            description=p.description or None,
            rag={k: v for k, v in asdict(p).items() if v is not None and k != "description"},
        )
        for name, p in state.settings.presets.items()
    ]
    return [*cards, ModelCard(id=root, root=root, description="the default preset")]


@router.get("/v1/models", dependencies=[Depends(known_key)])
async def models(state: ServerState = Depends(get_state)) -> ModelList:
    return ModelList(data=_cards(state))


@router.get("/v1/models/{model}", dependencies=[Depends(known_key)])
async def model(model: str, state: ServerState = Depends(get_state)) -> ModelCard:
    state.preset(model)  # 404 in OpenAI's shape for an unknown id
    return next(c for c in _cards(state) if c.id == model)


@router.get("/v1/indexes", dependencies=[Depends(known_key)])
async def indexes(state: ServerState = Depends(get_state)) -> IndexList:
    cards = []
    for name in state.indexes.names():
        s = state.indexes.get(name)
        manifest = s.index.manifest if s.index else None
        cards.append(
            IndexCard(
                id=name,
                default=name == state.indexes.default,
                passages=len(s.engine.docstore),
                documents=manifest.corpus.get("documents") if manifest else None,
                retrievers=list(s.engine.retrievers),
                default_retriever=s.engine.default_retriever,
                built_at=manifest.build.get("created_at") if manifest else None,
                loaded_at=s.loaded_at,
            )
        )
    return IndexList(data=cards)


@router.get("/metrics", include_in_schema=False)
async def metrics(state: ServerState = Depends(get_state)) -> Response:
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
