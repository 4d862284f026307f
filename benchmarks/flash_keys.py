"""Flash attention and the K cache type (issue 10): why the deterministic backend keeps bf16 keys.

    python -m benchmarks.flash_keys --out benchmarks/results

ggml's CPU flash attention has three paths: a row path (each query row over the whole KV cache),
a split path (a lone sequence's one token, KV cache split across threads, from 512 cells) and a
tiled path (prompt pieces of 64 rows or more). The last two are taken only for an f16 or f32 K
cache, and they sum in another order than the row path, so with f16 keys a token's logits change
with whether its sequence is alone in the step. This measures, on the bundled GGUF in this
process (repacked weights and tiled matmul off, as in the backend), for attention without flash
attention, with it over f16 keys (llama-server's default) and over bf16 keys (the backend's):

- invariance: a sequence of 700 tokens decodes 6 greedy steps alone and beside 1, 3 and 7 others;
- time of a decode step at 1, 4 and 8 sequences of 700 tokens, and of reading a 2,000-token
  prompt in pieces of 64, paired against attention without flash attention in the same repeat;
- accuracy: next-token distributions over 1,200 positions of two repository texts against an
  f32 KV cache without flash attention (same top token; mean KL divergence).
"""

from __future__ import annotations

import math
import os
import platform
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.repack import Probe, cli, invariance_rows

F32, F16, BF16 = 0, 1, 30  # ggml type ids
# name -> (flash attention, K cache type, V cache type)
KINDS = {
    "no flash attention": (False, F16, F16),
    "flash attention, f16 keys": (True, F16, F16),
    "flash attention, bf16 keys": (True, BF16, F16),
}
REFERENCE = (False, F32, F32)
LONG = 700  # tokens of each sequence's prompt: past the split path's 512 cells
PIECE = 60  # prompt tokens per llama_decode call: under the tiled path's 64 rows
# Companions of repack.WATCH (sequence 5), consecutive ids: one llama.cpp pass.
GROUPS = {"alone": [5], "2 wide": [4, 5], "4 wide": [2, 3, 4, 5], "8 wide": list(range(8))}
TEXTS = (Path("README.md"), Path("ragserve/generation/llama_step.py"))


class LongProbe(Probe):
    """``repack.Probe`` over 700-token prompts, read in pieces of ``PIECE`` tokens."""

    def __init__(self, flash: bool, type_k: int, type_v: int):
        super().__init__(False, flash, kv=(type_k, type_v), cells=2048)
        text = TEXTS[0].read_text().encode()
        self.prompts = [
            self.model.tokenize(text[i * 300 : i * 300 + 4000], add_bos=True, special=False)[:LONG]
            for i in range(len(self.prompts))
        ]

    def pieces(self, seq: int, tokens: list[int], every: bool = False) -> Iterator[list[int]]:
        """Read ``tokens`` into ``seq`` from position 0, a piece per call; yields the batch
        indices whose logits were kept: every position's with ``every``, else the last."""
        for a in range(0, len(tokens), PIECE):
            piece = tokens[a : a + PIECE]
            keep = range(len(piece)) if every else range(len(piece) - 1, len(piece))
            self._decode([(seq, a + k, t, k in keep) for k, t in enumerate(piece)])
            yield list(keep)

    def _prefill(self, seqs: list[int]) -> dict[int, int]:
        self.clear()
        first = {}
        for s in seqs:
            for kept in self.pieces(s, self.prompts[s]):
                first[s] = int(self._logits(kept[-1]).argmax())
        return first

    def clear(self) -> None:
        self.llama.llama_memory_clear(self.llama.llama_get_memory(self.ctx.ctx), True)


def prefill_s(probe: LongProbe, tokens: list[int]) -> float:
    probe.clear()
    start = time.perf_counter()
    for _ in probe.pieces(0, tokens):
        pass
    return time.perf_counter() - start


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max()
    return x - math.log(np.exp(x).sum())


def accuracy(probes: dict[str, LongProbe], ref: LongProbe) -> dict[str, dict[str, float]]:
    """Piece by piece, every kind beside the reference: no logits kept beyond a piece."""
    same = dict.fromkeys(probes, 0)
    kl = dict.fromkeys(probes, 0.0)
    n = 0
    for path in TEXTS:
        tokens = ref.model.tokenize(path.read_text().encode(), add_bos=True, special=False)
        tokens = tokens[200:800]
        for p in (ref, *probes.values()):
            p.clear()
        reads = {k: p.pieces(0, tokens, every=True) for k, p in probes.items()}
        for kept in ref.pieces(0, tokens, every=True):
            want = [log_softmax(ref._logits(i).astype(np.float64)) for i in kept]
            n += len(want)
            for kind, probe in probes.items():
                next(reads[kind])
                for i, lp in zip(kept, want, strict=True):
                    lq = log_softmax(probe._logits(i).astype(np.float64))
                    same[kind] += int(lp.argmax() == lq.argmax())
                    kl[kind] += float((np.exp(lp) * (lp - lq)).sum())
    return {k: {"same_top_token": round(same[k] / n, 4), "mean_kl": kl[k] / n} for k in probes}


def run(repeats: int, steps: int) -> dict[str, Any]:
    probes = {kind: LongProbe(*cfg) for kind, cfg in KINDS.items()}
    invariance = {
        kind: {name: probe.greedy(seqs, 6)[0] for name, seqs in GROUPS.items()}
        for kind, probe in probes.items()
    }
    widths = (1, 4, 8)
    step_ms: dict[str, dict[int, list[float]]] = {k: {w: [] for w in widths} for k in probes}
    long_prompt = probes["no flash attention"].model.tokenize(
        (TEXTS[0].read_text() * 2).encode(), add_bos=True, special=False
    )[:2000]
    prefill: dict[str, list[float]] = {k: [] for k in probes}
    for _ in range(repeats):  # every kind back to back at each width: drift falls on each
        for w in widths:
            for kind, probe in probes.items():
                step_ms[kind][w].append(round(probe.greedy(list(range(w)), steps)[1], 2))
        for kind, probe in probes.items():
            prefill[kind].append(round(prefill_s(probe, long_prompt), 3))
    acc = accuracy(probes, LongProbe(*REFERENCE))
    return {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "prompt_tokens": LONG,
        "steps": steps,
        "invariance": invariance,
        "step_ms": {k: {str(w): v for w, v in t.items()} for k, t in step_ms.items()},
        "prefill_2000_s": prefill,
        "accuracy_vs_f32": acc,
    }


def _paired(xs: list[float], base: list[float]) -> float:
    return statistics.median(x / b for x, b in zip(xs, base, strict=True))


def markdown(res: dict[str, Any]) -> str:
    kinds = list(res["invariance"])
    base = kinds[0]
    head = ["| | " + " | ".join(kinds) + " |", "|---" * (len(kinds) + 1) + "|"]
    lines = [
        "## Flash attention and the K cache type (issue 10)",
        "",
        f"Machine: {res['machine']}; bundled Gemma 3 270M Q4_K_M; `python -m benchmarks.flash_keys`"
        ". Repacked weights and tiled matmul off, as in the backend. A sequence of "
        f"{res['prompt_tokens']} tokens decodes 6 greedy steps beside the others of its group: "
        "equal letters in a column, bit-identical logits at every step (A: alone).",
        "",
        *head,
    ]
    lines += invariance_rows(res["invariance"])
    lines += [
        "",
        f"Time, median over repeats (all kinds back to back), and against no flash attention in "
        f"the same repeat: a decode step ({res['steps']} greedy steps, every sequence "
        f"{res['prompt_tokens']} tokens in), and reading a 2,000-token prompt in pieces of "
        f"{PIECE} (one sequence):",
        "",
        *head,
    ]
    times = res["step_ms"]
    for w in times[base]:
        cells = [
            f"{statistics.median(times[k][w]):.1f} ms ({_paired(times[k][w], times[base][w]):.2f}×)"
            for k in kinds
        ]
        seqs = "1 sequence" if w == "1" else f"{w} sequences"
        lines.append(f"| decode step, {seqs} | " + " | ".join(cells) + " |")
    pre = res["prefill_2000_s"]
    cells = [
        f"{statistics.median(pre[k]):.2f} s ({_paired(pre[k], pre[base]):.2f}×)" for k in kinds
    ]
    lines.append("| 2,000-token prompt | " + " | ".join(cells) + " |")
    acc = res["accuracy_vs_f32"]
    lines += [
        "",
        "Against an f32 KV cache without flash attention, next token at every position of two "
        "repository texts (600 positions each, prompt pieces as above):",
        "",
        *head,
        "| same top token | " + " | ".join(f"{acc[k]['same_top_token']:.1%}" for k in kinds) + " |",
        "| mean KL divergence | " + " | ".join(f"{acc[k]['mean_kl']:.4f}" for k in kinds) + " |",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    cli("flash_keys", __doc__ or "", run, markdown, steps=48)


if __name__ == "__main__":
    main()
