"""The vLLM backend against a real in-process vLLM engine serving the bundled model: the engine
of the server ``test_vllm_server.py`` talks to, with a 2048-token context.

``make test`` runs this module in ``.venv-vllm`` (vLLM's CPU build); ``scripts/gpu_check.sh`` runs
it on CUDA. In the main environment vLLM is absent and the module is skipped with that reason.
"""

from __future__ import annotations

import asyncio

import pytest

from ragserve.errors import ContextLengthError
from ragserve.generation.base import SamplingParams
from tests.conftest import LiveServer
from tests.vllm import needs_vllm

pytestmark = needs_vllm


@pytest.fixture
def run(server: LiveServer):  # type: ignore[no-untyped-def]
    """Runs a coroutine on the server's event loop, where its vLLM engine lives."""
    return server.run


@pytest.fixture
def gen(server: LiveServer):  # type: ignore[no-untyped-def]
    """The ``VLLMGenerator`` the server answers with (``tests/vllm/conftest.py``)."""
    return server.app.state.ragserve.engine.generator


async def _tokens(gen, prompt, params: SamplingParams) -> tuple[list[int], list]:  # type: ignore[no-untyped-def]
    chunks = [c async for c in gen.generate(prompt, params)]
    return [t for c in chunks for t in c.token_ids], chunks


def test_greedy_determinism_100_prompts(gen, run) -> None:  # type: ignore[no-untyped-def]
    prompts = [f"Question {i}: what is {i} plus {i + 1}?\nAnswer:" for i in range(100)]
    params = SamplingParams(max_tokens=16)

    async def batch(order: list[str]) -> dict[str, list[int]]:
        outs = await asyncio.gather(*(_tokens(gen, p, params) for p in order))
        return {p: o[0] for p, o in zip(order, outs, strict=True)}

    first = run(batch(prompts))
    second = run(batch(prompts[::-1]))  # other batch neighbours, same outputs
    assert sum(first[p] == second[p] for p in prompts) == 100
    assert all(len(v) == 16 for v in first.values())


def test_generation_answers_with_bos_and_counts_usage(gen, run) -> None:  # type: ignore[no-untyped-def]
    prompt = "Question: What is the capital of France?\nAnswer:"
    ids = gen.tokenize(prompt, special=True)
    assert ids[0] == gen._tokenizer.bos_token_id  # the exported tokenizer keeps Gemma's BOS
    tokens, chunks = run(_tokens(gen, prompt, SamplingParams(max_tokens=12)))
    text = "".join(c.text for c in chunks)
    assert "Paris" in text
    last = chunks[-1]
    assert last.finish_reason in ("stop", "length")
    assert last.usage.prompt_tokens == len(ids)
    assert last.usage.completion_tokens == len(tokens)


def test_stop_strings_end_the_stream(gen, run) -> None:  # type: ignore[no-untyped-def]
    prompt = "Count: 1, 2, 3, 4,"
    _, free = run(_tokens(gen, prompt, SamplingParams(max_tokens=16)))
    text = "".join(c.text for c in free)
    assert "7" in text  # the model counts on without a stop
    _, stopped = run(_tokens(gen, prompt, SamplingParams(max_tokens=16, stop=("7",))))
    assert "7" not in "".join(c.text for c in stopped)
    assert stopped[-1].finish_reason == "stop"


def test_next_token_topk_agrees_with_generation(gen, run) -> None:  # type: ignore[no-untyped-def]
    prompt = gen.tokenize("The capital of France is", special=True)
    prefixes = [prompt] + [[*prompt, t] for t in gen.tokenize(" Paris and the capital of")]

    async def go():  # type: ignore[no-untyped-def]
        firsts = [(await _tokens(gen, p, SamplingParams(max_tokens=1)))[0][0] for p in prefixes]
        return firsts, await gen.next_token_topk(prefixes * 3, 5)

    firsts, tops = run(go())
    n = len(prefixes)
    assert tops[:n] == tops[n : 2 * n] == tops[2 * n :]  # the batch around a prefix does not matter
    assert [t[0].token_id for t in tops[:n]] == firsts  # top-1 is the greedy choice
    for row in tops:
        assert len(row) == 5
        lps = [t.logprob for t in row]
        assert lps == sorted(lps, reverse=True) and lps[0] <= 0


def test_closing_a_stream_frees_the_request(gen, run) -> None:  # type: ignore[no-untyped-def]
    async def go() -> int:
        params = SamplingParams(max_tokens=400)
        stream = gen.generate("Tell me a long story about a dragon:", params)
        seen = 0
        async for _ in stream:
            seen += 1
            if seen == 3:
                break
        await stream.aclose()
        await asyncio.sleep(0.2)
        return seen

    assert run(go()) == 3
    assert gen.unfinished_requests() == 0


def test_prompt_over_the_context_names_both_lengths(gen, run) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ContextLengthError, match=r"2100 tokens.*2048"):
        run(_tokens(gen, [5] * 2100, SamplingParams(max_tokens=4)))
