"""What a running server holds, reached by routes through ``Depends(get_state)``, never globals."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from ragserve.config import Settings
from ragserve.engine.core import Engine
from ragserve.errors import NotFoundError
from ragserve.indexing import LoadedIndex
from ragserve.server.limits import InFlightLimiter


@dataclass
class ServerState:
    settings: Settings
    engine: Engine
    limiter: InFlightLimiter
    index: LoadedIndex | None = None

    def model_names(self) -> list[str]:
        return [self.settings.model_alias, self.engine.generator.model_name]

    def check_model(self, model: str | None) -> str:
        """The model name to echo back; unknown names get a 404 like OpenAI's."""
        if model is None or model in self.model_names():
            return model or self.settings.model_alias
        raise NotFoundError(
            f"model {model!r} not found; this server serves {', '.join(self.model_names())}",
            param="model",
            code="model_not_found",
        )


def get_state(request: Request) -> ServerState:
    return request.app.state.ragserve
