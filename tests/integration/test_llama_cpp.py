"""The real bundled model via llama.cpp: determinism, prefix reuse, stops, limits, cancel."""

from __future__ import annotations

import asyncio

import pytest

from ragserve.errors import ContextLengthError, InputError, NotFoundError
from ragserve.generation.base import SamplingParams
from ragserve.generation.llama_cpp import LlamaCppGenerator

pytestmark = pytest.mark.integration

GREEDY = SamplingParams(max_tokens=24)


async def collect(gen: LlamaCppGenerator, prompt, params=GREEDY):  # type: ignore[no-untyped-def]
    chunks = [c async for c in gen.generate(prompt, params)]
    ids = [t for c in chunks for t in c.token_ids]
    return "".join(c.text for c in chunks), ids, chunks[-1]


def test_greedy_is_deterministic_whatever_ran_before(generator: LlamaCppGenerator) -> None:
    prompts = [
        "The capital of France is",
        "Python's nonlocal statement",
        "The capital of France is Paris, and the capital of Italy is",
    ]

    async def run() -> list[list[int]]:
        # Interleave so each prompt runs once cold and once right after a prompt sharing its prefix.
        out = []
        for p in [*prompts, *reversed(prompts), *prompts]:
            out.append((await collect(generator, p))[1])
        return out

    runs = asyncio.run(run())
    n = len(prompts)
    first, second, third = runs[:n], runs[n : 2 * n][::-1], runs[2 * n :]
    assert first == second == third
    assert all(len(ids) > 0 for ids in first)


def test_prefix_reuse_skips_the_shared_prompt(generator: LlamaCppGenerator) -> None:
    base = "Passages about Python. " * 40

    async def run() -> tuple[int, int]:
        await collect(generator, base + "Question one?", SamplingParams(max_tokens=1))
        before = generator.stats["evaluated_tokens"]
        await collect(generator, base + "Question two?", SamplingParams(max_tokens=1))
        return generator.stats["evaluated_tokens"] - before, len(generator.tokenize(base))

    evaluated, shared = asyncio.run(run())
    assert shared > 200
    assert evaluated < 100  # at most one 64-token chunk plus the new suffix


def test_usage_length_and_stop(generator: LlamaCppGenerator) -> None:
    text, ids, last = asyncio.run(collect(generator, "1, 2, 3, 4,", SamplingParams(max_tokens=5)))
    assert last.finish_reason == "length" and last.usage.completion_tokens == 5 == len(ids)
    assert last.usage.prompt_tokens == len(generator._prompt_ids("1, 2, 3, 4,"))
    text, _, last = asyncio.run(
        collect(generator, "1, 2, 3, 4,", SamplingParams(max_tokens=40, stop=("7",)))
    )
    assert last.finish_reason == "stop" and "7" not in text and "6" in text


def test_next_token_topk_agrees_with_greedy_generation(generator: LlamaCppGenerator) -> None:
    prompt = generator._prompt_ids("The capital of France is")
    _, ids, _ = asyncio.run(collect(generator, prompt, SamplingParams(max_tokens=3)))
    prefixes = [prompt, prompt + ids[:1], prompt + ids[:2]]
    tops = asyncio.run(generator.next_token_topk(prefixes, 4))
    assert [t[0].token_id for t in tops] == ids
    assert all(t[0].logprob >= t[1].logprob >= t[3].logprob for t in tops)


def test_prompt_longer_than_context_names_both_lengths(generator: LlamaCppGenerator) -> None:
    with pytest.raises(ContextLengthError, match=r"prompt is \d+ tokens but .* 2048 tokens"):
        asyncio.run(collect(generator, "word " * 3000))


def test_closing_the_stream_frees_the_model(generator: LlamaCppGenerator) -> None:
    async def run() -> str:
        stream = generator.generate("Once upon a time", SamplingParams(max_tokens=200))
        async for _ in stream:
            break
        await stream.aclose()
        text, _, _ = await asyncio.wait_for(collect(generator, "Hello"), timeout=60)
        return text

    assert isinstance(asyncio.run(run()), str)


def test_bad_model_paths(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(NotFoundError, match="model file not found"):
        LlamaCppGenerator(tmp_path / "missing.gguf")
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a model")
    with pytest.raises(InputError, match="not a GGUF file"):
        LlamaCppGenerator(junk)


def test_concurrent_requests_interleave_and_match_sequential(
    generator: LlamaCppGenerator,
) -> None:
    """Slots: a short request started beside a long one finishes first, with the same tokens."""
    long_p, short_p = "Once upon a time there was", "The capital of France is"

    async def run() -> tuple[list, list, list]:  # type: ignore[type-arg]
        alone = [
            (await collect(generator, p, SamplingParams(max_tokens=n)))[1]
            for p, n in ((long_p, 60), (short_p, 4))
        ]
        done: list[str] = []

        async def tagged(p: str, n: int) -> list[int]:
            _, ids, _ = await collect(generator, p, SamplingParams(max_tokens=n))
            done.append(p)
            return ids

        together = await asyncio.gather(tagged(long_p, 60), tagged(short_p, 4))
        return alone, list(together), done

    alone, together, done = asyncio.run(run())
    assert together == alone
    assert done == [short_p, long_p]
