"""``GET /health`` and ``GET /v1/models``: what load balancers and OpenAI clients probe."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from ragserve.server.protocol import ModelCard, ModelList
from ragserve.server.state import ServerState, get_state

router = APIRouter()


# HEAD too: load balancers and uptime checks often probe with it.
@router.head("/health", operation_id="health_head")
@router.get("/health", operation_id="health")
async def health(state: ServerState = Depends(get_state)) -> dict[str, object]:
    index = state.index
    return {
        "status": "ok",
        "model": state.engine.generator.model_name,
        "index": index.manifest.name if index else None,
        "passages": len(state.engine.docstore),
        "retrievers": list(state.engine.retrievers),
        "in_flight": state.limiter.in_flight,
    }


@router.get("/v1/models")
async def models(state: ServerState = Depends(get_state)) -> ModelList:
    root = state.engine.generator.model_name
    return ModelList(
        data=[ModelCard(id=state.settings.model_alias, root=root), ModelCard(id=root, root=root)]
    )
