"""``ragserve bench serve``: measure any OpenAI-compatible endpoint under load, as vLLM's
``bench serve`` measures a model server: open-loop arrivals from a gamma process (burstiness 1 is
Poisson) or closed-loop concurrency; per request TTFT, inter-token latencies, TPOT, end-to-end
latency and retrieval steps; summaries and goodput under SLOs. JSON field names follow vLLM's
where the concept is the same (``request_throughput``, ``mean_ttft_ms``, ``p99_itl_ms`` …)."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import httpx

from ragserve.errors import InputError

PERCENTILES = (50, 90, 99)


@dataclass
class Outcome:
    """One request, as the client saw it."""

    ok: bool = False
    status: int = 0
    error: str = ""
    ttft: float = 0.0
    itl: list[float] = field(default_factory=list)
    latency: float = 0.0
    output_tokens: int = 0
    prompt_tokens: int = 0
    retrieval_steps: int = 0
    text: str = ""


def load_prompts(dataset: str, data_dir: Path, limit: int) -> tuple[list[str], list[str]]:
    """Questions of a shared QA set (``hotpotqa``, ``nq``) or of a JSONL file (``prompt`` or
    ``question`` per line), and a line naming each bad line (skipped, reported)."""
    path = (
        data_dir / dataset / "questions.jsonl" if dataset in ("hotpotqa", "nq") else Path(dataset)
    )
    if not path.is_file():
        raise InputError(f"dataset {dataset!r}: no such file {path}")
    prompts, bad = [], []
    with path.open() as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                text = record.get("prompt") or record.get("question")
            except (ValueError, AttributeError):
                text = None
            if not isinstance(text, str) or not text.strip():
                bad.append(f"{path}:{n}: not a JSON object with a 'prompt' or 'question'")
                continue
            prompts.append(text)
            if len(prompts) >= limit:
                break
    if not prompts:
        raise InputError(f"{path}: no prompts" + (f" ({bad[0]})" if bad else ""))
    return prompts, bad


def arrivals(n: int, rate: float, burstiness: float, seed: int) -> list[float]:
    """Send times (seconds from the start) of ``n`` requests from a gamma process with mean
    ``rate`` per second; ``burstiness`` is the gamma shape (1: Poisson; below 1: burstier)."""
    if rate == float("inf"):
        return [0.0] * n
    rng = random.Random(seed)
    t, out = 0.0, []
    for _ in range(n):
        out.append(t)
        t += rng.gammavariate(burstiness, 1.0 / (rate * burstiness))
    return out


# What a pooled connection the server closed under a request looks like (see ``one``).
_STALE = ("ServerDisconnectedError", "ClientOSError")


async def one(session: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> Outcome:
    """Stream one completion, stamping each piece of text as it arrives. aiohttp rather than
    httpx here: at 200 requests/s httpx alone adds about 2 ms per request (measured in
    ``benchmarks/harness_overhead.py``), aiohttp well under 1 ms (and vLLM's harness uses it).

    A pooled connection the server closed just as it was reused (llama.cpp's server ends a
    kept-alive connection after 5 requests) fails before any response: the server never
    answered it, so it is sent once more on a fresh connection, not counted as failed. Only
    once: a server that drops it again is counted as failing it.
    """
    out = await _attempt(session, url, body)
    if out.status == 0 and out.error.startswith(_STALE):
        out = await _attempt(session, url, body)
    return out


async def _attempt(session: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> Outcome:
    out = Outcome()
    t0 = time.perf_counter()
    last = None
    pieces: list[str] = []
    try:
        async with session.post(url, json=body) as r:
            out.status = r.status
            if r.status != 200:
                out.error = (await r.read()).decode(errors="replace")[:200]
                return out
            async for raw in r.content:
                line = raw.decode().strip()
                if not line.startswith("data:") or line[5:].strip() == "[DONE]":
                    continue
                try:
                    chunk = json.loads(line[5:])
                except ValueError:
                    out.error = f"not an OpenAI stream line: {line[:80]!r}"
                    return out
                if not isinstance(chunk, dict):
                    out.error = f"not an OpenAI stream chunk: {line[:80]!r}"
                    return out
                if "error" in chunk:
                    error = chunk["error"]
                    out.error = str(
                        error.get("message", error) if isinstance(error, dict) else error
                    )
                    return out
                if chunk.get("rag_step") is not None or chunk.get("citations"):
                    out.retrieval_steps += 1
                for choice in chunk.get("choices") or []:
                    piece = (choice.get("delta") or {}).get("content") or choice.get("text")
                    if piece:
                        now = time.perf_counter()
                        if last is None:
                            out.ttft = now - t0
                        else:
                            out.itl.append(now - last)
                        last = now
                        pieces.append(piece)
                usage = chunk.get("usage")
                if usage:
                    out.output_tokens = int(usage.get("completion_tokens") or 0)
                    out.prompt_tokens = int(usage.get("prompt_tokens") or 0)
    except (aiohttp.ClientError, asyncio.TimeoutError) as e:
        out.error = f"{type(e).__name__}: {e}"
        return out
    out.latency = time.perf_counter() - t0
    out.text = "".join(pieces)
    out.output_tokens = out.output_tokens or len(pieces)
    out.ok = last is not None
    if not out.ok:
        out.error = "no text in the stream"
    return out


async def run(
    base_url: str,
    prompts: Sequence[str],
    *,
    model: str | None,
    max_tokens: int,
    rag: dict[str, Any] | None,
    request_rate: float = float("inf"),
    burstiness: float = 1.0,
    concurrency: int | None = None,
    seed: int = 0,
    api_key: str | None = None,
    timeout: float = 300.0,
    progress: bool = True,
    endpoint: str = "chat",
    ignore_eos: bool = False,
) -> tuple[list[Outcome], float]:
    """Send every prompt once: open loop at ``request_rate`` (``concurrency`` caps how many are
    in flight), or closed loop with ``concurrency`` clients when the rate is infinite.
    ``endpoint``: ``chat`` (the prompt as a user message) or ``completions`` (as a text prompt)."""
    from tqdm import tqdm

    path = {"chat": "/v1/chat/completions", "completions": "/v1/completions"}[endpoint]
    url = base_url.rstrip("/") + path
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    outcomes: list[Outcome] = [Outcome() for _ in prompts]
    gate = asyncio.Semaphore(concurrency or len(prompts))
    bar = tqdm(total=len(prompts), disable=not progress, unit="req", desc="bench serve")

    def body(prompt: str) -> dict[str, Any]:
        b: dict[str, Any] = {
            "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True},
        }  # fmt: skip
        if endpoint == "chat":
            b["messages"] = [{"role": "user", "content": prompt}]
        else:
            b["prompt"] = prompt
        if ignore_eos:
            b["ignore_eos"] = True
        if model:
            b["model"] = model
        if rag:
            b["rag"] = rag
        return b

    connector = aiohttp.TCPConnector(limit=concurrency or 0)
    session = aiohttp.ClientSession(
        connector=connector, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout)
    )
    async with session:
        start = time.perf_counter()

        async def send(i: int, at: float) -> None:
            await asyncio.sleep(max(0.0, start + at - time.perf_counter()))
            async with gate:
                outcomes[i] = await one(session, url, body(prompts[i]))
            bar.update()

        times = arrivals(len(prompts), request_rate, burstiness, seed)
        await asyncio.gather(*(send(i, t) for i, t in enumerate(times)))
        duration = time.perf_counter() - start
    bar.close()
    return outcomes, duration


def _stats(name: str, values: list[float], unit: float = 1000.0) -> dict[str, float]:
    """``mean_NAME_ms``, ``median_…``, ``std_…``, ``p50``/``p90``/``p99``, as vLLM names them."""
    out: dict[str, float] = {}
    if not values:
        values = [float("nan")]
    xs = sorted(v * unit for v in values)
    mean = sum(xs) / len(xs)
    out[f"mean_{name}_ms"] = mean
    out[f"median_{name}_ms"] = xs[len(xs) // 2]
    out[f"std_{name}_ms"] = (sum((x - mean) ** 2 for x in xs) / len(xs)) ** 0.5
    for p in PERCENTILES:
        out[f"p{p}_{name}_ms"] = xs[min(len(xs) - 1, int(p / 100 * len(xs)))]
    return out


def summarize(
    outcomes: list[Outcome], duration: float, goodput: dict[str, float] | None = None
) -> dict[str, Any]:
    done = [o for o in outcomes if o.ok]
    tpots = [(o.latency - o.ttft) / (o.output_tokens - 1) for o in done if o.output_tokens > 1]
    res: dict[str, Any] = {
        "duration": duration,
        "completed": len(done),
        "failed": len(outcomes) - len(done),
        "failures_by_status": dict(Counter(str(o.status) for o in outcomes if not o.ok)),
        "total_input_tokens": sum(o.prompt_tokens for o in done),
        "total_output_tokens": sum(o.output_tokens for o in done),
        "request_throughput": len(done) / duration if duration else 0.0,
        "output_throughput": sum(o.output_tokens for o in done) / duration if duration else 0.0,
        "mean_retrieval_steps": sum(o.retrieval_steps for o in done) / max(len(done), 1),
        **_stats("ttft", [o.ttft for o in done]),
        **_stats("tpot", tpots),
        **_stats("itl", [g for o in done for g in o.itl]),
        **_stats("e2el", [o.latency for o in done]),
    }
    if goodput:
        good = [
            o for o in done
            if all(_slo_value(o, k) * 1000 <= limit for k, limit in goodput.items())
        ]  # fmt: skip
        res["request_goodput"] = len(good) / duration if duration else 0.0
    res["ttfts"] = [o.ttft for o in outcomes]
    res["itls"] = [o.itl for o in outcomes]
    res["e2els"] = [o.latency for o in outcomes]
    res["output_lens"] = [o.output_tokens for o in outcomes]
    res["errors"] = [o.error for o in outcomes]
    res["generated_texts"] = [o.text for o in outcomes]
    return res


def _slo_value(o: Outcome, key: str) -> float:
    if key == "ttft":
        return o.ttft
    if key == "e2el":
        return o.latency
    if key == "tpot":
        return (o.latency - o.ttft) / max(o.output_tokens - 1, 1)
    raise InputError(f"unknown SLO {key!r}; use ttft, tpot or e2el")


def parse_goodput(specs: Sequence[str]) -> dict[str, float]:
    """``ttft:500 e2el:8000`` (milliseconds) as a dict; each key checked."""
    out = {}
    for spec in specs:
        key, _, ms = spec.partition(":")
        if key not in ("ttft", "tpot", "e2el"):
            raise InputError(f"--goodput {spec!r}: unknown SLO {key!r}; use ttft, tpot or e2el")
        try:
            out[key] = float(ms)
        except ValueError:
            raise InputError(f"--goodput {spec!r}: expected KEY:MILLISECONDS") from None
    return out


async def check_endpoint(base_url: str, api_key: str | None) -> None:
    """Fail fast, in one line, on a URL that does not answer like an OpenAI server."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        async with httpx.AsyncClient(timeout=10, headers=headers) as c:
            r = await c.get(base_url.rstrip("/") + "/v1/models")
    except httpx.HTTPError as e:
        raise InputError(f"cannot reach {base_url}: {type(e).__name__}: {e}") from None
    try:
        ok = r.status_code == 200 and isinstance(r.json().get("data"), list)
    except ValueError:
        ok = False
    if not ok:
        raise InputError(
            f"{base_url}: GET /v1/models is not an OpenAI model list (HTTP {r.status_code})"
        )


def write(path: Path, result: dict[str, Any]) -> None:
    path.write_text(json.dumps(result, indent=2, default=float) + "\n")


def summary_lines(res: dict[str, Any]) -> list[str]:
    return [
        f"completed {res['completed']}, failed {res['failed']} {res['failures_by_status'] or ''}",
        f"duration {res['duration']:.2f} s; {res['request_throughput']:.2f} req/s;"
        f" {res['output_throughput']:.1f} output tok/s",
        f"TTFT ms mean {res['mean_ttft_ms']:.1f} median {res['median_ttft_ms']:.1f}"
        f" p99 {res['p99_ttft_ms']:.1f}",
        f"TPOT ms mean {res['mean_tpot_ms']:.1f}; ITL ms median {res['median_itl_ms']:.1f}"
        f" p99 {res['p99_itl_ms']:.1f}",
        f"E2EL ms median {res['median_e2el_ms']:.1f} p99 {res['p99_e2el_ms']:.1f}",
        *([f"goodput {res['request_goodput']:.2f} req/s"] if "request_goodput" in res else []),
    ]
