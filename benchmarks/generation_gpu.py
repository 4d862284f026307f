"""vLLM throughput on a GPU (run by ``scripts/gpu_check.sh``, never in CI): tokens/s of N
concurrent greedy streams, and the time of one batched ``next_token_topk`` call.

    python -m benchmarks.generation_gpu --model PATH --json OUT.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

from ragserve.generation.base import SamplingParams
from ragserve.generation.vllm import VLLMGenerator


async def run(model: str, tokenizer: str | None, streams: int, max_tokens: int) -> dict:
    gen = VLLMGenerator(model, max_model_len=2048, tokenizer=tokenizer)
    params = SamplingParams(max_tokens=max_tokens)
    prompts = [f"Question {i}: explain Python feature number {i}.\nAnswer:" for i in range(streams)]

    async def one(p: str) -> int:
        chunks = [c async for c in gen.generate(p, params)]
        return chunks[-1].usage.completion_tokens

    await asyncio.gather(*(one(p) for p in prompts[:4]))  # warm up
    t = time.perf_counter()
    produced = sum(await asyncio.gather(*(one(p) for p in prompts)))
    elapsed = time.perf_counter() - t
    prefix = gen.tokenize(" ".join(["Python passage."] * 100), special=True)
    t = time.perf_counter()
    await gen.next_token_topk([[*prefix, i] for i in range(100, 116)], 5)
    topk_s = time.perf_counter() - t
    await gen.aclose()
    return {
        "model": model,
        "streams": streams,
        "max_tokens": max_tokens,
        "tokens_per_s": round(produced / elapsed, 1),
        "topk16_s": round(topk_s, 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True)
    parser.add_argument("--tokenizer")
    parser.add_argument("--streams", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--json", required=True)
    args = parser.parse_args()
    res = asyncio.run(run(args.model, args.tokenizer, args.streams, args.max_tokens))
    Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res))


if __name__ == "__main__":
    main()
