"""Control flow of ``Engine.answer`` with a scripted generator: an empty answer written again on
the likeliest token that shows text, the fallback when there is none, and usage counted when the
repeat guard cuts generation short. The same behaviour runs with the
real model in tests/integration/test_answers.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

from ragserve.engine.core import Engine
from ragserve.engine.events import Finished, TokenText
from ragserve.errors import UpstreamError
from ragserve.generation.base import GenerationChunk, SamplingParams, TopToken, Usage


class Scripted:
    """Streams fixed pieces, one token each (``retry`` on a second call); records whether the
    stream was closed. Token ``i`` of ``top`` is its ``i``-th likeliest next token."""

    model_name = "scripted"
    context_length = 512

    def __init__(self, pieces: Sequence[str], retry: Sequence[str] = (), top: Sequence[str] = ()):
        self.pieces, self.retry, self.top = pieces, retry, top
        self.calls: list[tuple[str | list[int], SamplingParams]] = []
        self.closed = False

    async def generate(
        self, prompt: str | list[int], params: SamplingParams
    ) -> AsyncIterator[GenerationChunk]:
        self.calls.append((prompt, params))
        pieces = self.pieces if len(self.calls) == 1 else self.retry
        try:
            for i, p in enumerate(pieces):
                yield GenerationChunk(p, [i])
            yield GenerationChunk("", [], "stop", Usage(7, len(pieces)))
        finally:
            self.closed = True

    def tokenize(self, text: str, *, special: bool = False) -> list[int]:
        return list(range(len(text.split())))

    def detokenize(self, ids: Sequence[int]) -> str:
        return "".join(self.top[i] for i in ids)

    async def next_token_topk(self, prefixes: Sequence[list[int]], m: int) -> list[list[TopToken]]:
        return [[TopToken(i, -i) for i in range(min(m, len(self.top)))] for _ in prefixes]

    def chat_template(self, messages: Sequence[dict[str, str]]) -> str:
        return "one two three"


def answer(
    pieces: Sequence[str], strategy: str = "single", retry: Sequence[str] = (), top=()
) -> tuple[str, Finished, Scripted]:
    gen = Scripted(pieces, retry, top)
    engine = Engine({"bm25": object()}, docstore=None, generator=gen)  # type: ignore[arg-type,dict-item]

    async def collect() -> list:
        return [e async for e in engine.answer("p", SamplingParams(), strategy)]

    events = asyncio.run(collect())
    text = "".join(e.text for e in events if isinstance(e, TokenText))
    return text, events[-1], gen


def test_empty_answer_falls_back_to_a_clear_sentence() -> None:
    text, finished, gen = answer(["  ", "\n"], top=["\n", "", " \n\n"])
    assert text == "The passages do not say." and finished.finish_reason == "stop"
    assert len(gen.calls) == 1  # no token that shows text: nothing to write again
    assert answer([], "none")[0] == "I do not know."


def test_an_empty_answer_is_written_again_on_the_likeliest_token_that_shows_text() -> None:
    top = ["\n", "", "\nParis", " Paris", " The"]  # line breaks and end-of-text are passed over
    text, finished, gen = answer(["\n"], retry=[" is", " the capital."], top=top)
    assert text == "Paris is the capital."
    prompt, params = gen.calls[1]
    assert prompt == [0, 3] and params.max_tokens == SamplingParams().max_tokens - 1
    assert finished.usage == Usage(7, 1 + 2 + 1)  # both tries and the opening token


def test_a_backend_that_cannot_rank_next_tokens_gets_the_fallback() -> None:
    class NoTopk(Scripted):
        async def next_token_topk(self, prefixes: Sequence[list[int]], m: int) -> list:
            raise UpstreamError("logprobs must be at most 5")

    gen = NoTopk(["\n"], retry=[" no"], top=[" Paris"])
    engine = Engine({"bm25": object()}, docstore=None, generator=gen)  # type: ignore[arg-type,dict-item]

    async def collect() -> list:
        return [e async for e in engine.answer("p", SamplingParams(), "single")]

    events = asyncio.run(collect())
    assert [e.text for e in events if isinstance(e, TokenText)] == ["The passages do not say."]
    assert len(gen.calls) == 1


def test_an_answer_that_shows_text_is_never_written_again() -> None:
    text, _, gen = answer(["\n", " Rome"], retry=[" no"], top=[" Paris"])
    assert text == "Rome" and len(gen.calls) == 1


def test_a_repeat_stops_generation_and_usage_is_still_counted() -> None:
    loop = ["It is a format for data. ", "It is a format for data. ", "More. ", "Even more. "]
    text, finished, gen = answer(loop)
    assert text == "It is a format for data."
    assert gen.closed and finished.finish_reason == "stop"
    assert finished.usage == Usage(1, 2)  # the prompt "p" counted by the tokenizer; 2 tokens read
