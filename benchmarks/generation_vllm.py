"""The vLLM backend on whatever vLLM this environment has (CPU build or CUDA), side by side in one
run: tokens/s of N concurrent greedy streams against the same streams one at a time, and one
batched ``next_token_topk`` over 16 prefixes sharing a 300-token prompt against 16 separate calls.

    .venv-vllm/bin/python -m benchmarks.generation_vllm            # CPU, the bundled model
    python -m benchmarks.generation_vllm --model PATH --streams 64  # on a GPU (gpu_check.sh)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

from ragserve.generation.base import SamplingParams
from ragserve.generation.vllm import VLLMGenerator

RESULTS = Path(__file__).parent / "results"


async def run(model: str | None, streams: int, max_tokens: int) -> dict:
    from vllm.platforms import current_platform

    gen = VLLMGenerator(model, max_model_len=2048)
    params = SamplingParams(max_tokens=max_tokens)
    prompts = [f"Question {i}: explain Python feature number {i}.\nAnswer:" for i in range(streams)]

    async def one(p: str) -> int:
        chunks = [c async for c in gen.generate(p, params)]
        return chunks[-1].usage.completion_tokens

    await asyncio.gather(*(one(p) for p in prompts[:4]))  # warm up
    t = time.perf_counter()
    produced = sum(await asyncio.gather(*(one(p) for p in prompts)))
    concurrent_s = time.perf_counter() - t
    t = time.perf_counter()
    produced_seq = sum([await one(p) for p in prompts])
    sequential_s = time.perf_counter() - t

    base = gen.tokenize(" ".join(["Python passage about scopes."] * 60), special=True)[:300]
    prefixes = [[*base, 100 + i] for i in range(16)]
    await gen.next_token_topk([base], 5)  # the shared prompt is cached for both arms alike
    t = time.perf_counter()
    batched = await gen.next_token_topk(prefixes, 5)
    batched_s = time.perf_counter() - t
    t = time.perf_counter()
    separate = [(await gen.next_token_topk([p], 5))[0] for p in prefixes]
    separate_s = time.perf_counter() - t
    await gen.aclose()
    return {
        "platform": current_platform.device_name,
        "model": Path(gen.model_name).name,
        "streams": streams,
        "max_tokens": max_tokens,
        "tokens_per_s_concurrent": round(produced / concurrent_s, 1),
        "tokens_per_s_sequential": round(produced_seq / sequential_s, 1),
        "concurrency_speedup": round((produced / concurrent_s) / (produced_seq / sequential_s), 2),
        "topk16_batched_s": round(batched_s, 4),
        "topk16_separate_s": round(separate_s, 4),
        "topk16_speedup": round(separate_s / batched_s, 2),
        "topk_identical": batched == separate,
    }


def markdown(r: dict) -> str:
    return "\n".join(
        [
            f"# vLLM backend benchmark ({r['platform']})",
            "",
            f"Model: {r['model']} (the bundled Gemma 3 270M exported from its GGUF),"
            " batch-invariant settings (float32 on CPU). Run with"
            " `python -m benchmarks.generation_vllm`; numbers from the JSON beside this file.",
            "",
            "| what | reference | ours | ratio |",
            "|---|---|---|---|",
            f"| {r['streams']} greedy streams × {r['max_tokens']} tokens | one at a time"
            f" {r['tokens_per_s_sequential']} tok/s | concurrent {r['tokens_per_s_concurrent']}"
            f" tok/s | {r['concurrency_speedup']}× |",
            f"| `next_token_topk`, 16 prefixes sharing a 300-token prompt (cached) | 16 calls"
            f" {r['topk16_separate_s']} s | one call {r['topk16_batched_s']} s |"
            f" {r['topk16_speedup']}× (same results: {r['topk_identical']}) |",
            "",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", help="Hugging Face id or folder (default: the bundled model)")
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--json", help="default: benchmarks/results/generation_vllm_<platform>")
    args = parser.parse_args()
    res = asyncio.run(run(args.model, args.streams, args.max_tokens))
    out = Path(args.json or RESULTS / f"generation_vllm_{res['platform']}.json")
    out.write_text(json.dumps(res, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(res))
    print(json.dumps(res))


if __name__ == "__main__":
    main()
