"""Control flow of ``Engine.answer`` with a scripted generator: the fallback for an empty answer,
and usage counted when the repeat guard cuts generation short. The same behaviour runs with the
real model in tests/integration/test_answers.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

from ragserve.engine.core import Engine
from ragserve.engine.events import Finished, TokenText
from ragserve.generation.base import GenerationChunk, SamplingParams, Usage


class Scripted:
    """Streams fixed pieces, one token each; records whether the stream was closed."""

    model_name = "scripted"
    context_length = 512

    def __init__(self, pieces: Sequence[str]):
        self.pieces = pieces
        self.closed = False

    async def generate(self, prompt: str, params: SamplingParams) -> AsyncIterator[GenerationChunk]:
        try:
            for i, p in enumerate(self.pieces):
                yield GenerationChunk(p, [i])
            yield GenerationChunk("", [], "stop", Usage(7, len(self.pieces)))
        finally:
            self.closed = True

    def tokenize(self, text: str, *, special: bool = False) -> list[int]:
        return list(range(len(text.split())))

    def chat_template(self, messages: Sequence[dict[str, str]]) -> str:
        return "one two three"


def answer(pieces: Sequence[str], strategy: str = "single") -> tuple[str, Finished, Scripted]:
    gen = Scripted(pieces)
    engine = Engine({"bm25": object()}, docstore=None, generator=gen)  # type: ignore[arg-type,dict-item]

    async def collect() -> list:
        return [e async for e in engine.answer("p", SamplingParams(), strategy)]

    events = asyncio.run(collect())
    text = "".join(e.text for e in events if isinstance(e, TokenText))
    return text, events[-1], gen


def test_empty_answer_falls_back_to_a_clear_sentence() -> None:
    text, finished, _ = answer(["  ", "\n"])
    assert text == "The passages do not say." and finished.finish_reason == "stop"
    assert answer([], "none")[0] == "I do not know."


def test_a_repeat_stops_generation_and_usage_is_still_counted() -> None:
    loop = ["It is a format for data. ", "It is a format for data. ", "More. ", "Even more. "]
    text, finished, gen = answer(loop)
    assert text == "It is a format for data."
    assert gen.closed and finished.finish_reason == "stop"
    assert finished.usage == Usage(1, 2)  # the prompt "p" counted by the tokenizer; 2 tokens read
