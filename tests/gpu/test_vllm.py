"""The vLLM backend on a GPU (``scripts/gpu_check.sh``); skipped with a reason everywhere else."""

from __future__ import annotations

import asyncio
import importlib.util
import os

import pytest

pytestmark = pytest.mark.gpu


def _skip_reason() -> str | None:
    if importlib.util.find_spec("vllm") is None:
        return "vLLM is not installed (pip install 'ragserve[vllm]' on a CUDA machine)"
    import torch

    if not torch.cuda.is_available():
        return "no CUDA GPU on this machine"
    return None


reason = _skip_reason()
if reason:
    pytest.skip(reason, allow_module_level=True)


@pytest.fixture(scope="module")
def vllm_gen():  # type: ignore[no-untyped-def]
    from ragserve.generation.vllm import VLLMGenerator

    gen = VLLMGenerator(
        os.environ["GPU_CHECK_MODEL"],
        max_model_len=2048,
        tokenizer=os.environ.get("GPU_CHECK_TOKENIZER"),
    )
    yield gen
    asyncio.run(gen.aclose())


def test_greedy_determinism_100_prompts(vllm_gen) -> None:  # type: ignore[no-untyped-def]
    from ragserve.generation.base import SamplingParams

    prompts = [f"Question {i}: what is {i} plus {i + 1}? Answer:" for i in range(100)]

    async def run() -> list[list[int]]:
        async def one(p: str) -> list[int]:
            return [
                t
                async for c in vllm_gen.generate(p, SamplingParams(max_tokens=16))
                for t in c.token_ids
            ]

        return list(await asyncio.gather(*(one(p) for p in prompts)))

    assert asyncio.run(run()) == asyncio.run(run())


def test_next_token_topk_agrees_with_generation(vllm_gen) -> None:  # type: ignore[no-untyped-def]
    from ragserve.generation.base import SamplingParams

    prompt = vllm_gen.tokenize("The capital of France is", special=True)

    async def run():  # type: ignore[no-untyped-def]
        first = [
            t
            async for c in vllm_gen.generate(prompt, SamplingParams(max_tokens=1))
            for t in c.token_ids
        ]
        return first, await vllm_gen.next_token_topk([prompt] * 16, 5)

    first, tops = asyncio.run(run())
    assert all(t == tops[0] for t in tops)
    assert tops[0][0].token_id == first[0]
