"""Concurrent greedy streams (issue 10): ragserve's batched llama.cpp backend, both modes, against
llama.cpp's own ``llama-server`` built from the sources llama-cpp-python vendors, side by side in
one run on the same GGUF, all over HTTP on 127.0.0.1.

    python -m benchmarks.concurrency --out benchmarks/results

Two views, each at 1, 2, 4, 8 and 16 concurrent greedy streams (aggregate output tokens/s, TTFT
and inter-token latency p50/p99, outputs equal to the same request run alone):

- equal work: every stream generates exactly 128 tokens (``ignore_eos``) from the same prompt
  text, ragserve's backend in this process (both modes) against llama-server's
  ``/v1/completions``, measured back to back at each level (each backend loaded for its turn
  only: two contexts in one process slow each other), repeated (``--repeats``) with ratios
  paired within a repeat, as this shared host drifts;
- as a user sees it: ``/v1/chat/completions`` on both servers. The work differs here: ragserve's
  answers stop at the end of generation or their first repeat, llama-server's chat runs its
  ChatML template on to 128 tokens, so the mean tokens per stream is reported beside each rate.

Then 100 chat prompts of mixed lengths arriving in random order, each compared with its solo run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import itertools
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks import machine
from ragserve import environ_as_given
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
    env = environ_as_given() if kind == "llama-server" else None
    return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)


def body(prompt: str, max_tokens: int, stream: bool) -> dict[str, Any]:
    return {
        "model": "ragserve",
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": stream,
        **({"stream_options": {"include_usage": True}} if stream else {}),
        "rag": {"strategy": "none"},
    }


async def one(client: httpx.AsyncClient, url: str, kind: str, prompt: str, max_tokens: int):  # type: ignore[no-untyped-def]
    """Stream one chat completion: text, completion tokens, TTFT and inter-chunk gaps."""
    payload = body(prompt, max_tokens, True)
    headers = {}
    if kind == "llama-server":
        payload.pop("rag")
        # Its HTTP library closes a kept-alive connection after 5 requests, which a pooled
        # client can race: a fresh loopback connection per request costs well under 1 ms.
        headers["Connection"] = "close"
    return await read_stream(client, f"{url}/v1/chat/completions", payload, headers)


async def read_stream(client: httpx.AsyncClient, url: str, payload: dict, headers: dict):  # type: ignore[no-untyped-def, type-arg]
    """POST and read an OpenAI SSE stream (chat deltas or completion text): the text, the
    completion tokens the usage chunk reports, TTFT and the gaps between text chunks."""
    t0 = time.perf_counter()
    stamps, text, tokens = [], [], 0
    async with client.stream("POST", url, json=payload, headers=headers) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data:") or "[DONE]" in line:
                continue
            event = json.loads(line[5:])
            if event.get("usage"):
                tokens = event["usage"]["completion_tokens"]
            for choice in event.get("choices", []):
                piece = choice.get("delta", {}).get("content") or choice.get("text")
                if piece:
                    stamps.append(time.perf_counter())
                    text.append(piece)
    ttft = stamps[0] - t0 if stamps else float("nan")
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    return "".join(text), tokens, ttft, gaps


async def one_backend(gen, prompt: str, max_tokens: int):  # type: ignore[no-untyped-def]
    """One stream straight from the generator: token ids, TTFT and inter-token gaps."""
    from ragserve.generation.base import SamplingParams

    params = SamplingParams(max_tokens=max_tokens, ignore_eos=True)
    t0 = time.perf_counter()
    stamps, ids = [], []
    async for chunk in gen.generate(prompt, params):
        if chunk.token_ids:
            stamps.append(time.perf_counter())
            ids.extend(chunk.token_ids)
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    return ids, len(ids), stamps[0] - t0, gaps


async def one_completion(client: httpx.AsyncClient, url: str, prompt: str, max_tokens: int):  # type: ignore[no-untyped-def]
    """One llama-server ``/v1/completions`` stream of exactly ``max_tokens`` tokens."""
    payload = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True,
               "ignore_eos": True, "stream_options": {"include_usage": True}}  # fmt: skip
    headers = {"Connection": "close"}
    return await read_stream(client, f"{url}/v1/completions", payload, headers)


def row(n: int, res: list, wall: float, solo: list) -> dict[str, Any]:  # type: ignore[type-arg]
    """A level's numbers from its streams: (output, tokens, ttft, gaps) each."""
    gaps = [g for r in res for g in r[3]]
    return {
        "streams": n,
        "tokens_per_s": round(sum(r[1] for r in res) / wall, 1),
        "mean_tokens": round(sum(r[1] for r in res) / n, 1),
        "ttft_p50_s": round(pct([r[2] for r in res], 0.5), 3),
        "ttft_p99_s": round(pct([r[2] for r in res], 0.99), 3),
        "itl_p50_ms": round(1000 * pct(gaps, 0.5), 1),
        "itl_p99_ms": round(1000 * pct(gaps, 0.99), 1),
        "equal_to_solo": sum(r[0] == s for r, s in zip(res, solo, strict=False)),
        "outputs": n,
    }


def equal_work_prompts() -> list[str]:
    """The text ragserve's chat route gives the bundled model (its GGUF has no chat template)."""
    from ragserve.generation.chat import plain_transcript

    asks = [f"Explain {t} in Python with a short example." for t in TOPICS]
    return [plain_transcript([{"role": "user", "content": a}]) for a in asks]


@contextlib.asynccontextmanager
async def backend(kind: str, prompt: str):  # type: ignore[no-untyped-def]
    """A ragserve backend up for one turn, warmed by a token (llama.cpp sizes its buffers on the
    first decode), closed after: two llama.cpp contexts in one process, each stepped from its
    own thread, slow each other (measured here: one stream 44 -> 26 tok/s once the other had
    decoded), which a server, one context per process, never sees."""
    from ragserve.generation.llama_cpp import LlamaCppGenerator

    gen = LlamaCppGenerator(
        n_ctx=4096, slots=8, n_threads=os.cpu_count(), deterministic=kind == "backend"
    )
    try:
        await one_backend(gen, prompt, 1)
        yield gen
    finally:
        await gen.aclose()


async def equal_work(kinds: list[str], port: int, out: Path, repeats: int) -> dict[str, list]:  # type: ignore[type-arg]
    """128 tokens per stream whatever the model would say.

    llama-server stays up; each ragserve backend is loaded for its turn (``backend``). Each
    repeat goes over the levels with the kinds back to back at each, the first one rotating,
    so a slow minute of this shared host weighs on every kind of that level, not on one; each
    row carries its repeat, and the ratios pair rows of one repeat and level.
    """
    prompts = equal_work_prompts()
    proc = None
    url = f"http://127.0.0.1:{port}"
    if "llama-server" in kinds:
        proc = start("llama-server", port, out / ".llama-server.log")
    try:
        if proc is not None:
            wait_ready(url, proc)
        async with httpx.AsyncClient(timeout=600) as client:

            async def streams(kind: str, ps: list[str], together: bool):  # type: ignore[no-untyped-def]
                """Each prompt's stream, all at once or one after another; and the wall time."""
                up = backend(kind, prompts[0]) if kind in BACKENDS else contextlib.nullcontext()
                async with up as gen:
                    if gen is not None:
                        go = functools.partial(one_backend, gen)
                    else:
                        go = functools.partial(one_completion, client, url)
                    t = time.perf_counter()
                    if together:
                        res = await asyncio.gather(*(go(p, 128) for p in ps))
                    else:
                        res = [await go(p, 128) for p in ps]
                    return res, time.perf_counter() - t

            solo = {k: [r[0] for r in (await streams(k, prompts, False))[0]] for k in kinds}
            rows: dict[str, list] = {k: [] for k in kinds}  # type: ignore[type-arg]
            for rep in range(repeats):
                for i, n in enumerate(LEVELS):
                    shift = (rep + i) % len(kinds)
                    for kind in kinds[shift:] + kinds[:shift]:
                        res, wall = await streams(kind, prompts[:n], True)
                        rows[kind].append({**row(n, res, wall, solo[kind]), "repeat": rep})
                        print(kind, "equal work", rows[kind][-1], flush=True)
    finally:
        if proc is not None:
            stop(proc)
    if "llama-server" in kinds:
        ref = {(r["streams"], r["repeat"]): r for r in rows["llama-server"]}
        for kind in kinds:
            for r in rows[kind]:
                base = ref[r["streams"], r["repeat"]]
                r["vs_llama_server"] = round(r["tokens_per_s"] / base["tokens_per_s"], 3)
    return rows


def summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per level: the median over repeats of each number (the paired ratio among them)."""
    out = []
    for n in LEVELS:
        some = [r for r in rows if r["streams"] == n]
        if not some:
            continue
        med = {
            k: round(statistics.median(r[k] for r in some), 3)
            for k in some[0]
            if k not in ("repeat",)
        }
        med["equal_to_solo"] = sum(r["equal_to_solo"] for r in some)
        med["outputs"] = sum(r["outputs"] for r in some)
        if "vs_llama_server" in some[0]:
            med["vs_llama_server_each"] = [r["vs_llama_server"] for r in some]
        out.append(med)
    return out


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
            rows.append(row(n, res, time.perf_counter() - t, solo))
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


def stop(proc: subprocess.Popen) -> None:  # type: ignore[type-arg]
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


async def measure(kind: str, port: int, out: Path) -> dict[str, Any]:
    """The chat levels and the random arrivals of one server (over HTTP, one server up)."""
    url = f"http://127.0.0.1:{port}"
    proc = start(kind, port, out / f".{kind}.log")
    try:
        wait_ready(url, proc)
        chat = await levels(url, kind)
        return {"levels": chat, "random_arrivals": await random_arrivals(url, kind)}
    finally:
        stop(proc)


BACKENDS = ("backend", "backend-fast")
KINDS = ("ragserve", "ragserve-fast", "llama-server")
LABELS = {
    "backend": "ragserve backend (deterministic, default)",
    "backend-fast": "ragserve backend, nondeterministic",
    "ragserve": "ragserve (deterministic, default)",
    "ragserve-fast": "ragserve `--nondeterministic`",
    "llama-server": "llama-server `-np 8`",
}


def table(rows: dict[str, list[dict[str, Any]]], kinds: tuple[str, ...]) -> list[str]:
    lines = [
        "| streams | server | tok/s | vs llama-server | tokens per stream | TTFT p50/p99 s "
        "| ITL p50/p99 ms | equal to solo |",
        "|---|---|---|---|---|---|---|---|",
    ]
    ref = {r["streams"]: r for r in rows["llama-server"]}
    for n in LEVELS:
        for kind in kinds:
            r = next(x for x in rows[kind] if x["streams"] == n)
            ratio = f"{r['tokens_per_s'] / ref[n]['tokens_per_s']:.2f}×"
            if "vs_llama_server_each" in r:
                each = ", ".join(map(str, r["vs_llama_server_each"]))
                ratio = f"{r['vs_llama_server']:.2f}× ({each})"
            lines.append(
                f"| {n} | {LABELS[kind]} | {r['tokens_per_s']} | {ratio} | "
                f"{r.get('mean_tokens', '-')} | {r['ttft_p50_s']}/{r['ttft_p99_s']} | "
                f"{r['itl_p50_ms']}/{r['itl_p99_ms']} | {r['equal_to_solo']}/{r['outputs']} |"
            )
    return lines


def markdown(res: dict[str, Any]) -> str:
    servers = res["servers"]
    ew = res["equal_work"]
    lines = [
        "## Concurrent greedy streams (issue 10)",
        "",
        f"Machine: {res['machine']}; bundled Gemma 3 270M Q4_K_M; "
        f"llama.cpp from llama-cpp-python {res['llama_cpp_python']}; temperature 0, 128 tokens "
        "at most. Run with `python -m benchmarks.concurrency`.",
        "",
        "### Equal work",
        "",
        "Every stream generates exactly 128 tokens (`ignore_eos`) from the same prompt text: "
        "ragserve's batched backend called in the benchmark's process, llama-server over "
        "`/v1/completions` on 127.0.0.1. llama-server stays up, each backend is loaded for its "
        "turn only (two llama.cpp contexts in one process, each stepped from its own thread, "
        f"slow each other); {ew['repeats']} repeats, "
        "each going over the levels with the three back to back at each level (the first one "
        "rotating). Numbers are medians over the repeats; the ratio to llama-server is paired "
        "within a repeat and level, each repeat's ratio in brackets; equal to solo counts every "
        "output of every repeat.",
        "",
        *table(ew["summary"], ("backend", "backend-fast", "llama-server")),
    ]
    if not all(servers.get(k, {}).get("levels") for k in KINDS):  # an --equal-work-only run
        return "\n".join(lines) + "\n"
    lines += [
        "",
        "### As a user sees it",
        "",
        "`/v1/chat/completions`, streaming, over HTTP, one server up at a time, one pass. The "
        "work differs: ragserve's answers end at the end of generation or at their first "
        "repeated sentence; llama-server applies a ChatML template the model does not know and "
        "runs on to 128 tokens every time.",
        "",
        *table({k: servers[k]["levels"] for k in KINDS}, KINDS),
        "",
        "Mixed-length prompts (0 to ~60 filler sentences), 32 tokens each, arriving in random "
        "order over ~10 s, each compared with the same request run alone:",
        "",
        "| server | outputs equal to solo |",
        "|---|---|",
    ]
    for kind in KINDS:
        ra = servers[kind]["random_arrivals"]
        lines.append(f"| {LABELS[kind]} | {ra['equal_to_solo']}/{ra['prompts']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument(
        "--kinds",
        default=",".join(KINDS),
        help="servers whose chat levels and random arrivals to (re)measure; others keep theirs",
    )
    parser.add_argument("--repeats", type=int, default=3, help="equal-work repeats")
    parser.add_argument(
        "--equal-work-only", action="store_true", help="skip the chat levels and random arrivals"
    )
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if shutil.which("cmake") is None:
        sys.exit("cmake is needed to build llama-server")
    build_llama_server()  # before any server runs, so the build never overlaps a measurement
    path = out / "concurrency.json"
    res: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {"servers": {}}
    res.update({
        "machine": machine(),
        "llama_cpp_python": llama_cpp_version(),
        "date": time.strftime("%Y-%m-%d"),
    })  # fmt: skip
    port = 18500 + os.getpid() % 500
    kinds = [*BACKENDS, "llama-server"]
    rows = asyncio.run(equal_work(kinds, port, out, args.repeats))
    res["equal_work"] = {
        "repeats": args.repeats,
        "summary": {k: summary(v) for k, v in rows.items()},
        "rows": rows,
    }
    for part in res["servers"].values():
        part.pop("equal_work", None)  # the earlier one-pass layout
    path.write_text(json.dumps(res, indent=2) + "\n")
    if not args.equal_work_only:
        for kind in args.kinds.split(","):
            res["servers"].setdefault(kind, {}).update(asyncio.run(measure(kind, port, out)))
            path.write_text(json.dumps(res, indent=2) + "\n")
    (out / "concurrency.md").write_text(markdown(res))
    print(markdown(res))


if __name__ == "__main__":
    main()
