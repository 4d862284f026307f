"""The load harness against three OpenAI-compatible servers (issue 14): ragserve, llama.cpp's own
``llama-server`` and vLLM's own OpenAI server, each measured by the ``ragserve bench serve``
command a user would type, on the same questions, in one run.

    python -m benchmarks.harness_servers --out benchmarks/results

Equal work: ``/v1/completions``, greedy, exactly ``--max-tokens`` tokens (``ignore_eos``), the
first ``--num-requests`` HotpotQA questions, ``--concurrency`` in flight. The servers take turns,
never two at once. vLLM runs from the ``.venv-vllm`` that ``make vllm-install`` builds (its CPU
build), on the bundled GGUF exported to a Hugging Face folder, so nothing is downloaded. This
shows the harness works against each; the servers' speeds are not the point (vLLM's CPU build in
float32 is not llama.cpp's Q4 kernels).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks.concurrency import start
from benchmarks.operations import RAGSERVE
from benchmarks.spec_load import free_port

VLLM_PYTHON = Path(".venv-vllm/bin/python")
KEYS = ("completed", "failed", "request_throughput", "output_throughput", "median_ttft_ms",
        "p99_ttft_ms", "mean_tpot_ms", "median_itl_ms", "mean_e2el_ms")  # fmt: skip


def start_vllm(port: int, log: Path) -> subprocess.Popen:  # type: ignore[type-arg]
    """vLLM's OpenAI server on the bundled model's export (the export made by its own venv)."""
    export = subprocess.run(
        [str(VLLM_PYTHON), "-c",
         "from ragserve.generation.hf_export import export_hf; print(export_hf())"],
        capture_output=True, text=True, check=True,
    ).stdout.strip().splitlines()[-1]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "2"}
    cmd = [str(VLLM_PYTHON), "-m", "vllm.entrypoints.openai.api_server", "--model", export,
           "--served-model-name", "gemma-3-270m", "--host", "127.0.0.1", "--port", str(port),
           "--max-model-len", "2048", "--enforce-eager", "--dtype", "float32"]  # fmt: skip
    return subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)


def ready(url: str, proc: subprocess.Popen, log: Path, seconds: int = 900) -> str:  # type: ignore[type-arg]
    """The first model id once ``/v1/models`` answers (``/health`` may answer before that)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            r = httpx.get(f"{url}/v1/models", timeout=2)
            if r.status_code == 200:
                return str(r.json()["data"][0]["id"])
        except (httpx.HTTPError, KeyError, IndexError, ValueError):
            pass
        time.sleep(1)
    raise RuntimeError(f"{url} did not become ready")


def bench(url: str, model: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    out = tmp / f"bench-{time.monotonic_ns()}.json"
    cmd = [RAGSERVE, "bench", "serve", "--url", url, "--dataset", "hotpotqa", "--model", model,
           "--endpoint", "completions", "--ignore-eos", "--max-tokens", str(args.max_tokens),
           "--num-requests", str(args.num_requests), "--concurrency", str(args.concurrency),
           "--quiet", "--json", str(out)]  # fmt: skip
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if run.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({run.returncode}): {run.stderr[-2000:]}")
    res = json.loads(out.read_text())
    return {"command": " ".join(["ragserve", *cmd[1:-2]]), **{k: res[k] for k in KEYS}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--servers", default="ragserve,llama-server,vllm")
    ap.add_argument("--num-requests", type=int, default=24)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for kind in args.servers.split(","):
            port, log = free_port(), tmp / f"{kind}.log"
            proc = start_vllm(port, log) if kind == "vllm" else start(kind, port, log)
            url = f"http://127.0.0.1:{port}"
            try:
                t = time.perf_counter()
                served = ready(url, proc, log)
                start_s = time.perf_counter() - t
                model = "ragserve-none" if kind == "ragserve" else served
                rows.append({"server": kind, "model": model, "start_s": round(start_s, 1),
                             **bench(url, model, args, tmp)})  # fmt: skip
                print(rows[-1], flush=True)
            finally:
                proc.terminate()
                proc.wait(timeout=120)
    res = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "date": time.strftime("%Y-%m-%d"), "num_requests": args.num_requests,
        "concurrency": args.concurrency, "max_tokens": args.max_tokens, "rows": rows,
    }  # fmt: skip
    (out / "harness_servers.json").write_text(json.dumps(res, indent=2) + "\n")
    (out / "harness_servers.md").write_text(markdown(res))
    print(markdown(res))


def markdown(res: dict[str, Any]) -> str:
    lines = [
        "# `ragserve bench serve` against three OpenAI-compatible servers (issue 14)",
        "",
        f"`python -m benchmarks.harness_servers`, {res['machine']}, {res['date']}: the first "
        f"{res['num_requests']} HotpotQA questions, {res['concurrency']} in flight, "
        f"`/v1/completions`, greedy, exactly {res['max_tokens']} tokens (`ignore_eos`); one run, "
        "the servers taking turns. Speeds differ by design (vLLM's CPU build runs the model in "
        "float32; the other two run llama.cpp's Q4_K_M): the point is that one harness measures "
        "all three with no failed request.",
        "",
        "| server | model sent | ready after s | completed / failed | req/s | output tok/s "
        "| TTFT p50 / p99 ms | TPOT mean ms | ITL p50 ms | E2EL mean ms |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res["rows"]:
        lines.append(
            f"| {r['server']} | `{Path(r['model']).name}` | {r['start_s']} | {r['completed']} / "
            f"{r['failed']} | {r['request_throughput']:.3f} | {r['output_throughput']:.1f} "
            f"| {r['median_ttft_ms']:.1f} / {r['p99_ttft_ms']:.1f} | {r['mean_tpot_ms']:.1f} "
            f"| {r['median_itl_ms']:.1f} | {r['mean_e2el_ms']:.1f} |"
        )
    lines += ["", "Command (the model and port differ per server):", "", "```bash",
              res["rows"][0]["command"] if res["rows"] else "", "```"]  # fmt: skip
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
