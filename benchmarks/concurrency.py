"""Concurrent greedy streams (issue 10): ragserve's batched llama.cpp backend, both modes, against
llama.cpp's own ``llama-server`` built from the sources llama-cpp-python vendors, side by side in
one run on the same GGUF, all over HTTP on 127.0.0.1.

    python -m benchmarks.concurrency --out benchmarks/results

Per server: 1, 2, 4, 8 and 16 concurrent streams of 128 greedy tokens (aggregate output tokens/s,
TTFT and inter-token latency p50/p99, outputs equal to the same request run alone), then 100
prompts of mixed lengths arriving in random order, each compared with its solo run.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import httpx

from ragserve.generation.models import bundled_gguf

CACHE = Path(".cache/llama-server")
LEVELS = (1, 2, 4, 8, 16)
TOPICS = ["the nonlocal statement", "list comprehensions", "the GIL", "asyncio event loops",
          "decorators", "context managers", "generators", "the json module", "dataclasses",
          "type hints", "slots", "metaclasses", "the walrus operator", "f-strings", "pathlib",
          "itertools"]  # fmt: skip
NO_AMX = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"


def llama_cpp_version() -> str:
    from importlib.metadata import version

    return version("llama-cpp-python")


def build_llama_server() -> Path:
    """llama-server from the llama-cpp-python sdist of the installed version, built once."""
    binary = CACHE / "build" / "bin" / "llama-server"
    if binary.exists():
        return binary
    CACHE.mkdir(parents=True, exist_ok=True)
    ver = llama_cpp_version()
    sdist = CACHE / f"llama_cpp_python-{ver}.tar.gz"
    if not sdist.exists():
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary",
             ":all:", f"llama-cpp-python=={ver}", "-d", str(CACHE)],
            check=True,
        )  # fmt: skip
    src = CACHE / "src"
    if not src.exists():
        with tarfile.open(sdist) as tar:
            tar.extractall(src, filter="data")
    llama = next(src.glob("*/vendor/llama.cpp"))
    flags = NO_AMX if platform.machine() == "x86_64" else ""
    subprocess.run(
        ["cmake", "-S", str(llama), "-B", str(CACHE / "build"), "-DCMAKE_BUILD_TYPE=Release",
         "-DGGML_NATIVE=ON", "-DLLAMA_CURL=OFF", "-DLLAMA_BUILD_SERVER=ON",
         "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
         f"-DCMAKE_C_FLAGS={flags}", f"-DCMAKE_CXX_FLAGS={flags}"],
        check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    subprocess.run(
        ["cmake", "--build", str(CACHE / "build"), "--target", "llama-server", "-j",
         str(os.cpu_count() or 1)],
        check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    return binary


def wait_ready(url: str, proc: subprocess.Popen, seconds: int = 600) -> None:  # type: ignore[type-arg]
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} did not become ready")


def start(kind: str, port: int, log: Path) -> subprocess.Popen:  # type: ignore[type-arg]
    threads = str(os.cpu_count() or 1)
    if kind == "llama-server":
        cmd = [str(build_llama_server()), "-m", str(bundled_gguf()), "--host", "127.0.0.1",
               "--port", str(port), "-np", "8", "-c", str(8 * 4096), "-t", threads,
               "--no-webui"]  # fmt: skip
    else:
        ragserve = Path(sys.executable).with_name("ragserve")
        cmd = [str(ragserve), "serve", "--port", str(port), "--slots", "8",
               "--n-threads", threads, "--max-queued", "256"]  # fmt: skip
        if kind == "ragserve-fast":
            cmd.append("--nondeterministic")
    out = log.open("w")
    return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)


def body(prompt: str, max_tokens: int, stream: bool) -> dict[str, Any]:
    return {
        "model": "ragserve",
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": stream,
        "rag": {"strategy": "none"},
    }


async def one(client: httpx.AsyncClient, url: str, kind: str, prompt: str, max_tokens: int):  # type: ignore[no-untyped-def]
    """Stream one chat completion: text, completion tokens, TTFT and inter-chunk gaps."""
    payload = body(prompt, max_tokens, True)
    headers = {}
    if kind == "llama-server":
        payload.pop("rag")
        payload["stream_options"] = {"include_usage": True}
        # Its HTTP library closes a kept-alive connection after 5 requests, which a pooled
        # client can race: a fresh loopback connection per request costs well under 1 ms.
        headers["Connection"] = "close"
    t0 = time.perf_counter()
    stamps, text, tokens = [], [], 0
    post = client.stream("POST", f"{url}/v1/chat/completions", json=payload, headers=headers)
    async with post as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data:") or "[DONE]" in line:
                continue
            event = json.loads(line[5:])
            if event.get("usage"):
                tokens = event["usage"]["completion_tokens"]
            for choice in event.get("choices", []):
                delta = choice.get("delta", {}).get("content")
                if delta:
                    stamps.append(time.perf_counter())
                    text.append(delta)
    ttft = stamps[0] - t0 if stamps else float("nan")
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    return "".join(text), tokens, ttft, gaps


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def levels(url: str, kind: str) -> list[dict[str, Any]]:
    prompts = [f"Explain {t} in Python with a short example." for t in TOPICS]
    async with httpx.AsyncClient(timeout=600) as client:
        solo = [(await one(client, url, kind, p, 128))[0] for p in prompts]
        rows = []
        for n in LEVELS:
            t = time.perf_counter()
            res = await asyncio.gather(*(one(client, url, kind, p, 128) for p in prompts[:n]))
            wall = time.perf_counter() - t
            gaps = [g for r in res for g in r[3]]
            rows.append({
                "streams": n,
                "tokens_per_s": round(sum(r[1] for r in res) / wall, 1),
                "ttft_p50_s": round(pct([r[2] for r in res], 0.5), 3),
                "ttft_p99_s": round(pct([r[2] for r in res], 0.99), 3),
                "itl_p50_ms": round(1000 * pct(gaps, 0.5), 1),
                "itl_p99_ms": round(1000 * pct(gaps, 0.99), 1),
                "equal_to_solo": sum(r[0] == s for r, s in zip(res, solo, strict=False)),
                "outputs": n,
            })  # fmt: skip
            print(kind, rows[-1], flush=True)
    return rows


def mixed_prompts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        filler = " ".join(
            f"Note {j}: {TOPICS[(i + j) % len(TOPICS)]} matter in Python code."
            for j in range(rng.choice([0, 2, 8, 30, 60]))
        )
        out.append(f"{filler}\nQuestion {i}: explain {TOPICS[i % len(TOPICS)]} briefly.".strip())
    return out


async def random_arrivals(url: str, kind: str, n: int = 100) -> dict[str, Any]:
    """n prompts of mixed lengths: each alone, then all arriving in random order and overlapping."""
    prompts = mixed_prompts(n)
    rng = random.Random(1)
    async with httpx.AsyncClient(timeout=600) as client:
        solo = [(await one(client, url, kind, p, 32))[0] for p in prompts]

        async def late(i: int, delay: float) -> str:
            await asyncio.sleep(delay)
            return (await one(client, url, kind, prompts[i], 32))[0]

        order = list(range(n))
        rng.shuffle(order)
        delays = sorted(rng.uniform(0, n * 0.1) for _ in range(n))
        busy = await asyncio.gather(*(late(i, d) for i, d in zip(order, delays, strict=True)))
    same = sum(busy[k] == solo[i] for k, i in enumerate(order))
    return {"prompts": n, "equal_to_solo": same}


async def measure(kind: str, port: int, out: Path) -> dict[str, Any]:
    url = f"http://127.0.0.1:{port}"
    proc = start(kind, port, out / f".{kind}.log")
    try:
        wait_ready(url, proc)
        rows = await levels(url, kind)
        return {"levels": rows, "random_arrivals": await random_arrivals(url, kind)}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


KINDS = ("ragserve", "ragserve-fast", "llama-server")
LABELS = {
    "ragserve": "ragserve (deterministic, default)",
    "ragserve-fast": "ragserve `--nondeterministic`",
    "llama-server": "llama-server `-np 8`",
}


def markdown(res: dict[str, Any]) -> str:
    lines = [
        "## Concurrent greedy streams (issue 10)",
        "",
        f"Machine: {res['machine']}, {res['cores']} cores; bundled Gemma 3 270M Q4_K_M; "
        f"llama.cpp from llama-cpp-python {res['llama_cpp_python']}. All over HTTP "
        "(`/v1/chat/completions`, streaming, 128 tokens, temperature 0), one run, side by side. "
        "Run with `python -m benchmarks.concurrency`.",
        "",
        "| streams | server | tok/s | vs llama-server | TTFT p50/p99 s | ITL p50/p99 ms "
        "| equal to solo |",
        "|---|---|---|---|---|---|---|",
    ]
    ref = {r["streams"]: r for r in res["servers"]["llama-server"]["levels"]}
    for n in LEVELS:
        for kind in KINDS:
            r = next(x for x in res["servers"][kind]["levels"] if x["streams"] == n)
            ratio = r["tokens_per_s"] / ref[n]["tokens_per_s"]
            lines.append(
                f"| {n} | {LABELS[kind]} | {r['tokens_per_s']} | {ratio:.2f}× | "
                f"{r['ttft_p50_s']}/{r['ttft_p99_s']} | {r['itl_p50_ms']}/{r['itl_p99_ms']} | "
                f"{r['equal_to_solo']}/{r['outputs']} |"
            )
    lines += ["", "Mixed-length prompts (0 to ~60 filler sentences), 32 tokens each, arriving in "
              "random order over ~10 s, each compared with the same request run alone:", "",
              "| server | outputs equal to solo |", "|---|---|"]  # fmt: skip
    for kind in KINDS:
        ra = res["servers"][kind]["random_arrivals"]
        lines.append(f"| {LABELS[kind]} | {ra['equal_to_solo']}/{ra['prompts']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument(
        "--kinds", default=",".join(KINDS), help="servers to (re)measure; others keep their numbers"
    )
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if "llama-server" in args.kinds:
        if shutil.which("cmake") is None:
            sys.exit("cmake is needed to build llama-server")
        build_llama_server()  # before any server runs, so the build never overlaps a measurement
    path = out / "concurrency.json"
    res: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {"servers": {}}
    res.update({
        "machine": platform.machine(),
        "cores": os.cpu_count(),
        "llama_cpp_python": llama_cpp_version(),
        "date": time.strftime("%Y-%m-%d"),
    })  # fmt: skip
    port = 18500 + os.getpid() % 500
    for kind in args.kinds.split(","):
        res["servers"][kind] = asyncio.run(measure(kind, port, out))
        (out / "concurrency.json").write_text(json.dumps(res, indent=2) + "\n")
    (out / "concurrency.md").write_text(markdown(res))
    print(markdown(res))


if __name__ == "__main__":
    main()
