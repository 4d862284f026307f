"""The ``openai`` backend against a real vLLM OpenAI server on loopback (the "vLLM fleet" case),
serving the bundled model exported for vLLM. Started and stopped by the fixture.

Runs where ``tests/vllm/test_vllm.py`` runs (``.venv-vllm`` or a GPU machine).
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Iterator

import httpx
import pytest

from ragserve.generation.base import SamplingParams
from ragserve.generation.openai_upstream import OpenAIUpstreamGenerator
from tests.conftest import free_port, upstream_process
from tests.vllm import needs_vllm

pytestmark = needs_vllm


@pytest.fixture(scope="module")
def vllm_upstream() -> Iterator[str]:
    from vllm.platforms import current_platform

    from ragserve.generation.hf_export import export_hf

    port = free_port()
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server",
           "--model", str(export_hf()), "--served-model-name", "gemma-upstream",
           "--host", "127.0.0.1", "--port", str(port), "--max-model-len", "2048"]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    if current_platform.is_cpu():  # as VLLMGenerator sets up a CPU engine
        cmd += ["--dtype", "float32", "--enforce-eager", "--kv-cache-memory-bytes", str(1 << 30)]
    else:
        # The session's server engine holds 85% of the GPU; this one takes a tenth (14 GB on
        # an H200, ten times what the 270M model and its cache need).
        cmd += ["--gpu-memory-utilization", "0.1"]
        env["VLLM_BATCH_INVARIANT"] = "1"
    root = f"http://127.0.0.1:{port}"
    with upstream_process(cmd, root, timeout=600, env=env):
        yield f"{root}/v1"


@pytest.fixture
def gen(vllm_upstream: str) -> OpenAIUpstreamGenerator:
    g = OpenAIUpstreamGenerator(vllm_upstream)
    g.probe()
    return g


def test_probe_finds_token_prompts_ids_and_tokenizer(gen: OpenAIUpstreamGenerator) -> None:
    assert gen.model_name == "gemma-upstream" and gen.context_length == 2048
    assert gen._token_prompts and gen._ids_in_stream and gen._tokenize_path == "/tokenize"
    ids = asyncio.run(gen.atokenize("The capital of France is"))
    assert len(ids) == 5 and 2 not in ids  # plain tokens, no BOS


def test_stream_carries_the_tokens_the_upstream_returns_directly(
    gen: OpenAIUpstreamGenerator, vllm_upstream: str
) -> None:
    async def run():  # type: ignore[no-untyped-def]
        prompt = [2, *(await gen.atokenize("Question: What is the capital of France?\nAnswer:"))]
        chunks = [c async for c in gen.generate(prompt, SamplingParams(max_tokens=12))]
        await gen.aclose()
        return prompt, chunks

    prompt, chunks = asyncio.run(run())
    direct = httpx.post(
        f"{vllm_upstream}/completions",
        json={"model": "gemma-upstream", "prompt": prompt, "max_tokens": 12, "temperature": 0,
              "logprobs": 0, "return_tokens_as_token_ids": True},
        timeout=60,
    ).json()["choices"][0]  # fmt: skip
    ids = [t for c in chunks for t in c.token_ids]
    assert ids == [int(t.split(":")[1]) for t in direct["logprobs"]["tokens"]]
    assert "".join(c.text for c in chunks) == direct["text"]
    assert "Paris" in direct["text"]
    last = chunks[-1]
    assert last.usage.prompt_tokens == len(prompt) and last.usage.completion_tokens == len(ids)


def test_greedy_determinism_12_prompts(gen: OpenAIUpstreamGenerator) -> None:
    # 100 prompts run in-process (test_vllm.py); over HTTP, 12 show the tokens arrive intact.
    prompts = [f"Question {i}: what is {i} plus {i + 1}?\nAnswer:" for i in range(12)]
    params = SamplingParams(max_tokens=16)

    async def run() -> tuple[list[list[int]], list[list[int]]]:
        async def one(p: str) -> list[int]:
            return [t async for c in gen.generate(p, params) for t in c.token_ids]

        first = await asyncio.gather(*(one(p) for p in prompts))
        second = (await asyncio.gather(*(one(p) for p in prompts[::-1])))[::-1]
        await gen.aclose()
        return first, second

    first, second = asyncio.run(run())
    assert sum(a == b for a, b in zip(first, second, strict=True)) == len(prompts)
    assert all(len(a) == 16 for a in first)


def test_next_token_topk_agrees_with_greedy(gen: OpenAIUpstreamGenerator) -> None:
    async def run():  # type: ignore[no-untyped-def]
        base = [2, *(await gen.atokenize("The capital of France is"))]
        prefixes = [base, [*base, 9079], [*base, 9079, 236764]]
        one = SamplingParams(max_tokens=1)
        firsts = []
        for p in prefixes:
            firsts.append([t async for c in gen.generate(p, one) for t in c.token_ids])
        tops = await gen.next_token_topk(prefixes * 2, 4)
        await gen.aclose()
        return firsts, tops

    firsts, tops = asyncio.run(run())
    assert tops[:3] == tops[3:]
    assert [t[0].token_id for t in tops[:3]] == [f[0] for f in firsts]
    assert all(len(r) == 4 and r[0].logprob >= r[-1].logprob for r in tops)
