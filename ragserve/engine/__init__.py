"""Strategies, what to retrieve and when: each turns a request into a stream of events."""

from ragserve.engine.events import Citation, Event, Finished, Retrieved, Step, TokenText
from ragserve.engine.request import RagOptions, RagRequest

__all__ = [
    "Citation",
    "Event",
    "Finished",
    "RagOptions",
    "RagRequest",
    "Retrieved",
    "Step",
    "TokenText",
]
