"""The vLLM backend on whatever vLLM this environment has (CPU build or CUDA), side by side in one
run: tokens/s of N concurrent greedy streams against the same streams one at a time, and one
batched ``next_token_topk`` over 16 prefixes sharing a 300-token prompt against 16 separate calls.

    .venv-vllm/bin/python -m benchmarks.generation_vllm --also-fast  # CPU, the bundled model
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
# Each engine takes 40% of a GPU, so the second one starts even while the first one's memory is
# still being returned (ignored on CPU, where the KV cache has a fixed size).
GPU_SHARE = {"gpu_memory_utilization": 0.4}


async def determinism(gen: VLLMGenerator) -> dict:
    """Greedy continuations and top-k log-probabilities with other batch neighbours: how many of
    100 continuations repeat exactly, and the largest log-probability change for one prefix
    evaluated alone and inside a batch of 16 (a finer view of the same property)."""
    prompts = [f"Question {i}: what is {i} plus {i + 1}?\nAnswer:" for i in range(100)]
    params = SamplingParams(max_tokens=16)

    async def one(p: str) -> list[int]:
        return [t async for c in gen.generate(p, params) for t in c.token_ids]

    first = await asyncio.gather(*(one(p) for p in prompts))
    second = (await asyncio.gather(*(one(p) for p in prompts[::-1])))[::-1]
    prefixes = [gen.tokenize(p, special=True) for p in prompts[:16]]
    alone = [(await gen.next_token_topk([p], 5))[0] for p in prefixes]
    batched = await gen.next_token_topk(prefixes, 5)
    diff = max(
        abs(a.logprob - b.logprob)
        for ra, rb in zip(alone, batched, strict=True)
        for a, b in zip(ra, rb, strict=True)
    )
    return {
        "identical_of_100": sum(a == b for a, b in zip(first, second, strict=True)),
        "topk_same_tokens": [[t.token_id for t in r] for r in alone]
        == [[t.token_id for t in r] for r in batched],
        "topk_max_logprob_diff": diff,
    }


async def fast_determinism(model: str | None) -> dict:
    """The same check without the batch-invariant settings (bf16 on CPU, default kernels on GPU)."""
    from vllm.platforms import current_platform

    extra = {"dtype": "bfloat16"} if current_platform.is_cpu() else {}
    gen = VLLMGenerator(model, max_model_len=2048, deterministic=False, **extra, **GPU_SHARE)
    try:
        return await determinism(gen)
    finally:
        await gen.aclose()


async def run(model: str | None, streams: int, max_tokens: int) -> dict:
    from vllm.platforms import current_platform

    gen = VLLMGenerator(model, max_model_len=2048, **GPU_SHARE)
    det = await determinism(gen)
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
        "determinism": det,
        "determinism_without_batch_invariance": None,
        "tokens_per_s_concurrent": round(produced / concurrent_s, 1),
        "tokens_per_s_sequential": round(produced_seq / sequential_s, 1),
        "concurrency_speedup": round((produced / concurrent_s) / (produced_seq / sequential_s), 2),
        "topk16_batched_s": round(batched_s, 4),
        "topk16_separate_s": round(separate_s, 4),
        "topk16_speedup": round(separate_s / batched_s, 2),
        "topk_identical": batched == separate,
    }


def determinism_rows(r: dict) -> list[str]:
    ours, fast = r["determinism"], r["determinism_without_batch_invariance"] or {}

    def cell(d: dict, key: str, fmt: str = "{}") -> str:
        return fmt.format(d[key]) if key in d else "not run"

    return [
        "| Greedy determinism, 100 prompts × 2 (second pass reversed) | without batch-invariant"
        f" settings {cell(fast, 'identical_of_100', '{}/100')} |"
        f" {ours['identical_of_100']}/100 | — |",
        "| Top-5 log-probabilities of 16 prefixes, alone vs in one batch: largest change |"
        f" without batch-invariant settings {cell(fast, 'topk_max_logprob_diff', '{:.2g}')} |"
        f" {ours['topk_max_logprob_diff']:.2g} | — |",
    ]


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
            *determinism_rows(r),
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
    parser.add_argument(
        "--also-fast",
        action="store_true",
        help="also check determinism without the batch-invariant settings (a second engine)",
    )
    parser.add_argument("--json", help="default: benchmarks/results/generation_vllm_<platform>")
    args = parser.parse_args()
    res = asyncio.run(run(args.model, args.streams, args.max_tokens))
    out = Path(args.json or RESULTS / f"generation_vllm_{res['platform']}.json")
    out.parent.mkdir(parents=True, exist_ok=True)

    def write() -> None:
        out.write_text(json.dumps(res, indent=2) + "\n")
        out.with_suffix(".md").write_text(markdown(res))
        print(json.dumps(res), flush=True)

    write()  # kept if the second engine runs out of a time limit
    if args.also_fast:
        res["determinism_without_batch_invariance"] = asyncio.run(fast_determinism(args.model))
        write()


if __name__ == "__main__":
    main()
