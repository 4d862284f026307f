"""What a strategy emits: the server turns events into OpenAI chunks; bench and eval read them."""

from __future__ import annotations

from dataclasses import dataclass

from ragserve.generation.base import Usage


@dataclass(frozen=True)
class Citation:
    """A passage put in the prompt, numbered as the prompt numbers it."""

    index: int
    passage_id: int
    external_id: str
    doc_id: str
    title: str
    text: str
    score: float


@dataclass(frozen=True)
class Retrieved:
    """One retrieval step: the query issued and the passages it brought."""

    query: str
    citations: list[Citation]


@dataclass(frozen=True)
class Step:
    """One step of an iterative strategy, for its trace: a model turn (its text and the query it
    asked for), a retrieval (the query and the passages it brought), or the parametric fallback."""

    iteration: int
    kind: str  # "model", "retrieval" or "parametric"
    text: str
    query: str | None
    passages: tuple[str, ...]
    seconds: float


@dataclass(frozen=True)
class TokenText:
    text: str


@dataclass(frozen=True)
class SpecSummary:
    """What speculation did in one request: steps guessed and kept, and rollbacks."""

    steps: int
    accepted: int
    rollbacks: int


@dataclass(frozen=True)
class Finished:
    """The last event. ``iterations``: model turns an iterative strategy took;
    ``speculation``: present where the request speculated."""

    finish_reason: str
    usage: Usage
    iterations: int | None = None
    speculation: SpecSummary | None = None


Event = Retrieved | Step | TokenText | Finished
