"""What a running server holds, reached by routes through ``Depends(get_state)``, never globals."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fastapi import Request

from ragserve.config import Preset, Settings
from ragserve.engine.core import Engine
from ragserve.errors import DrainingError, NotFoundError, OverloadedError
from ragserve.generation.base import Generator
from ragserve.server.indexes import IndexSet
from ragserve.server.limits import InFlightLimiter
from ragserve.server.metrics import Metrics

if TYPE_CHECKING:
    from ragserve.server.auth import RateLimits


@dataclass
class ServerState:
    settings: Settings
    generator: Generator
    indexes: IndexSet
    limiter: InFlightLimiter
    rate_limits: RateLimits
    metrics: Metrics = field(default_factory=Metrics)
    draining: bool = False

    @property
    def engine(self) -> Engine:
        """The default index's current engine."""
        return self.indexes.get(None).engine

    def model_names(self) -> list[str]:
        """Served model ids: the presets, then the model's own name (the default preset)."""
        return [*self.settings.presets, self.generator.model_name]

    def preset(self, model: str | None) -> tuple[str, Preset]:
        """The model id to echo back and the preset it names; unknown ids get OpenAI's 404."""
        presets = self.settings.presets
        if model is None or model == self.generator.model_name:
            return model or self.settings.default_model, presets[self.settings.default_model]
        if model in presets:
            return model, presets[model]
        raise NotFoundError(
            f"model {model!r} not found; this server serves {', '.join(self.model_names())}",
            param="model",
            code="model_not_found",
        )

    def admit(self) -> None:
        """Take an in-flight place, or refuse with 503 (draining, or at the limit)."""
        if self.draining:
            raise DrainingError("server is shutting down; retry on another replica",
                                code="shutting_down")  # fmt: skip
        self.limiter.acquire()

    def release(self) -> None:
        self.limiter.release()


def get_state(request: Request) -> ServerState:
    state: ServerState | None = getattr(request.app.state, "ragserve", None)
    if state is None:  # the lifespan has not finished loading
        raise OverloadedError("server is starting: the model and indexes are loading",
                              code="starting")  # fmt: skip
    return state
