"""The ``openai`` backend against a real upstream: llama.cpp's OpenAI server on loopback."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from ragserve.errors import UpstreamError
from ragserve.generation.base import SamplingParams
from ragserve.generation.openai_upstream import OpenAIUpstreamGenerator
from ragserve.generation.tokenizer import GGUFTokenizer
from tests.conftest import free_port

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tokenizer() -> GGUFTokenizer:
    return GGUFTokenizer()


def upstream(url: str, tokenizer: GGUFTokenizer) -> OpenAIUpstreamGenerator:
    gen = OpenAIUpstreamGenerator(url, tokenizer=tokenizer)
    gen.probe()
    return gen


async def text_of(gen, prompt, params):  # type: ignore[no-untyped-def]
    chunks = [c async for c in gen.generate(prompt, params)]
    return "".join(c.text for c in chunks), chunks[-1]


def test_probe_finds_model_and_tokenizer(llama_upstream: str, tokenizer: GGUFTokenizer) -> None:
    gen = upstream(llama_upstream, tokenizer)
    assert gen.model_name == "gemma-upstream" and gen.context_length > 0
    assert asyncio.run(gen.atokenize("hello world"))[-2:] == tokenizer.tokenize("hello world")


def test_greedy_generation_is_deterministic_and_counts_usage(
    llama_upstream: str, tokenizer: GGUFTokenizer
) -> None:
    async def run() -> list:  # type: ignore[type-arg]
        gen = upstream(llama_upstream, tokenizer)
        params = SamplingParams(max_tokens=12)
        out = [await text_of(gen, p, params) for p in ["The capital of France is", "1, 2, 3,"] * 2]
        await gen.aclose()
        return out

    (a, la), (b, _), (a2, _), (b2, _) = asyncio.run(run())
    assert a == a2 and b == b2 and a.strip()
    assert la.finish_reason == "length" and la.usage.completion_tokens == 12


def test_stream_is_what_the_upstream_says_directly(
    llama_upstream: str, tokenizer: GGUFTokenizer
) -> None:
    prompt, params = "The capital of France is", SamplingParams(max_tokens=8)
    direct = httpx.post(
        f"{llama_upstream}/v1/completions",
        json={"prompt": prompt, "max_tokens": 8, "temperature": 0},
        timeout=60,
    ).json()["choices"][0]["text"]

    async def run() -> str:
        gen = upstream(llama_upstream, tokenizer)
        text, _ = await text_of(gen, prompt, params)
        await gen.aclose()
        return text

    assert asyncio.run(run()) == direct


def test_stop_strings(llama_upstream: str, tokenizer: GGUFTokenizer) -> None:
    gen = upstream(llama_upstream, tokenizer)
    text, last = asyncio.run(
        text_of(gen, "1, 2, 3, 4,", SamplingParams(max_tokens=30, stop=("7",)))
    )
    assert "7" not in text and "6" in text and last.finish_reason == "stop"


def test_next_token_topk_matches_greedy_choice(
    llama_upstream: str, tokenizer: GGUFTokenizer
) -> None:
    async def run() -> tuple[list, list[int]]:  # type: ignore[type-arg]
        gen = upstream(llama_upstream, tokenizer)
        ids = [tokenizer.bos_id, *tokenizer.tokenize("The capital of France is")]
        tops = await gen.next_token_topk([ids, ids], 3)
        text, _ = await text_of(gen, "The capital of France is", SamplingParams(max_tokens=1))
        await gen.aclose()
        return tops, tokenizer.tokenize(text)

    tops, first = asyncio.run(run())
    assert tops[0] == tops[1] and len(tops[0]) == 3
    assert tops[0][0].token_id == first[0]
    assert tops[0][0].logprob >= tops[0][1].logprob >= tops[0][2].logprob


def test_upstream_down_fails_fast_with_a_clear_error(tokenizer: GGUFTokenizer) -> None:
    gen = OpenAIUpstreamGenerator(
        f"http://127.0.0.1:{free_port()}", tokenizer=tokenizer, connect_timeout=1
    )
    start = time.monotonic()
    with pytest.raises(UpstreamError, match="unreachable"):
        gen.probe()
    assert time.monotonic() - start < 5
