"""Operator routes, guarded by the admin key: reload rebuilt indexes without a restart."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict

from ragserve.server.auth import admin_key
from ragserve.server.state import ServerState, get_state

router = APIRouter()


class ReloadRequest(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    indexes: list[str] | None = None  # default: every served index
    force: bool = False  # reload even where the build on disk did not change


@router.post("/admin/reload", dependencies=[Depends(admin_key)])
async def reload(
    body: ReloadRequest | None = None, state: ServerState = Depends(get_state)
) -> dict[str, dict[str, str]]:
    """Swap in each index whose build changed on disk; requests running finish on the old."""
    body = body or ReloadRequest()
    for name in body.indexes or []:
        state.indexes.get(name)  # 404 for one not served
    return {"indexes": await state.indexes.reload(body.indexes, force=body.force)}
