"""Repacked weights, flash attention and batch invariance (issue 10): a probe for the backend.

    python -m benchmarks.repack --out benchmarks/results

The deterministic backend loads the model without llama.cpp's repacked Q4_K weights, because
they make a token's logits depend on what else is in its step. This measures how, and what they
are worth, with and without flash attention: greedy decode steps of a watched sequence beside
different companions (which columns of the step it takes), bit for bit, and the time of a decode
step by width, for the four combinations. In this process, on the bundled GGUF, ggml's tiled
matmul off as in the backend; contexts here stay under 256 KV cells, where flash attention keeps
to its row path even over f16 keys (``benchmarks/flash_keys.py`` measures past 512).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import write_results

os.environ.setdefault("GGML_CPU_TILED_MM", "0")  # as the backend runs (llama_cpp.py)

SEQS = 16
# name -> (repacked weights, flash attention)
KINDS = {
    "plain": (False, False),
    "repacked": (True, False),
    "plain, flash attention": (False, True),
    "repacked, flash attention": (True, True),
}
WATCH = 5  # the sequence whose logits are compared
# Companions of the watched sequence, as sequence ids (one llama.cpp pass: consecutive ids).
GROUPS: dict[str, list[int]] = {
    "alone": [5],
    "4 wide, 2nd column": [4, 5, 6, 7],
    "4 wide, 1st column": [5, 6, 7, 8],
    "4 wide, 4th column": [2, 3, 4, 5],
    "8 wide, 5th column": [1, 2, 3, 4, 5, 6, 7, 8],
    "5 wide, in the first 4": [4, 5, 6, 7, 8],
    "6 wide, in the last 2": [0, 1, 2, 3, 4, 5],
    "16 wide": list(range(16)),
}


class Probe:
    """One context over the bundled model, ``SEQS`` sequences each in its own KV stream."""

    def __init__(
        self, repacked: bool, flash: bool = False, kv: tuple[int, int] = (1, 1), cells: int = 1024
    ):
        """``kv``: the K and V cache types (ggml type ids; 1 is f16); ``cells`` per sequence."""
        import llama_cpp
        from llama_cpp import _internals

        from ragserve.generation.models import resolve_gguf

        self.llama = llama_cpp
        mparams = llama_cpp.llama_model_default_params()
        mparams.use_extra_bufts = repacked
        self.model = _internals.LlamaModel(
            path_model=str(resolve_gguf(None)), params=mparams, verbose=False
        )
        cparams = llama_cpp.llama_context_default_params()
        cparams.n_ctx = cells * SEQS
        cparams.type_k, cparams.type_v = kv
        cparams.n_seq_max = SEQS
        cparams.kv_unified = False
        cparams.swa_full = True
        cparams.n_batch = cparams.n_ubatch = 128
        cparams.n_threads = cparams.n_threads_batch = os.cpu_count() or 1
        cparams.flash_attn_type = (
            llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
            if flash
            else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
        )
        self.ctx = _internals.LlamaContext(model=self.model, params=cparams, verbose=False)
        self.batch = _internals.LlamaBatch(n_tokens=256, embd=0, n_seq_max=1, verbose=False)
        self.n_vocab = self.model.n_vocab()
        texts = [
            f"Note {i}: the {('red', 'blue', 'old')[i % 3]} robot {i} walked" for i in range(SEQS)
        ]
        self.prompts = [self.model.tokenize(t.encode(), add_bos=True, special=False) for t in texts]

    def _decode(self, items: list[tuple[int, int, int, bool]]) -> None:
        b = self.batch.batch
        for n, (seq, pos, token, logits) in enumerate(items):
            b.token[n], b.pos[n], b.n_seq_id[n], b.logits[n] = token, pos, 1, logits
            b.seq_id[n][0] = seq
        b.n_tokens = len(items)
        if self.llama.llama_decode(self.ctx.ctx, b) != 0:
            raise RuntimeError("llama_decode failed")

    def _logits(self, i: int) -> np.ndarray:
        ptr = self.llama.llama_get_logits_ith(self.ctx.ctx, i)
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,))

    def _prefill(self, seqs: list[int]) -> dict[int, int]:
        """Each prompt alone, in one piece: the same keys and values whatever runs next."""
        self.llama.llama_memory_clear(self.llama.llama_get_memory(self.ctx.ctx), True)
        first = {}
        for s in seqs:
            p = self.prompts[s]
            self._decode([(s, k, t, k == len(p) - 1) for k, t in enumerate(p)])
            first[s] = int(self._logits(len(p) - 1).argmax())
        return first

    def greedy(self, seqs: list[int], steps: int) -> tuple[list[str], float]:
        """``steps`` greedy decode steps of ``seqs`` together: the watched sequence's logits
        after each (if it is one of them) and the mean time of a step in ms."""
        token = self._prefill(seqs)
        pos = {s: len(self.prompts[s]) for s in seqs}
        digests = []
        start = time.perf_counter()
        for _ in range(steps):
            self._decode([(s, pos[s], token[s], True) for s in seqs])
            for i, s in enumerate(seqs):
                logits = self._logits(i)
                if s == WATCH:
                    digests.append(hashlib.sha256(logits.tobytes()).hexdigest()[:12])
                token[s] = int(logits.argmax())
                pos[s] += 1
        return digests, (time.perf_counter() - start) / steps * 1000


def run(repeats: int, steps: int) -> dict[str, Any]:
    probes = {kind: Probe(repacked, flash) for kind, (repacked, flash) in KINDS.items()}
    invariance = {
        kind: {name: probe.greedy(seqs, 6)[0] for name, seqs in GROUPS.items()}
        for kind, probe in probes.items()
    }
    widths = (1, 4, 8, 16)
    times: dict[str, dict[int, list[float]]] = {k: {w: [] for w in widths} for k in probes}
    for _ in range(repeats):  # all kinds back to back at each width: drift falls on each
        for w in widths:
            for kind, probe in probes.items():
                times[kind][w].append(round(probe.greedy(list(range(w)), steps)[1], 2))
    return {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "watched_sequence": WATCH,
        "steps": steps,
        "invariance": invariance,
        "step_ms": {k: {str(w): v for w, v in t.items()} for k, t in times.items()},
    }


def _head(first: str) -> list[str]:
    return ["| " + " | ".join((first, *KINDS)) + " |", "|---" * (len(KINDS) + 1) + "|"]


def invariance_rows(inv: dict[str, dict[str, list[str]]]) -> list[str]:
    """A table row per group: a letter per kind, equal letters for bit-identical logits."""
    letters: dict[str, dict[str, str]] = {kind: {} for kind in inv}
    rows = []
    for name in next(iter(inv.values())):
        cells = [
            letters[kind].setdefault(",".join(inv[kind][name]), "ABCDEFGH"[len(letters[kind])])
            for kind in inv
        ]
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return rows


def cli(name: str, doc: str, run: Any, markdown: Any, steps: int) -> None:
    """A probe's command line (``--out``, ``--repeats``, ``--steps``): run, write results."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=steps)
    args = ap.parse_args()
    res = run(args.repeats, args.steps)
    write_results(args.out, name, res, markdown(res))


def markdown(res: dict[str, Any]) -> str:
    inv = res["invariance"]
    lines = [
        "## Repacked weights and batch invariance (issue 10)",
        "",
        f"Machine: {res['machine']}; bundled Gemma 3 270M Q4_K_M; `python -m benchmarks.repack`. "
        f"Sequence {res['watched_sequence']} decodes 6 greedy steps beside the others of its "
        "group (consecutive ids: one llama.cpp pass). Equal letters in a column: bit-identical "
        "logits at every step; A is the sequence run alone.",
        "",
        *_head("group"),
    ]
    lines += invariance_rows(inv)
    lines += [
        "",
        f"Decode step time by width, ms: {res['steps']} greedy steps from a 12-token prompt, "
        "median over repeats (the four back to back at each width), and against plain "
        "weights in the same repeat (median of the paired ratios):",
        "",
        *_head("width"),
    ]
    times = res["step_ms"]
    for w, plain in times["plain"].items():
        cells = []
        for kind in KINDS:
            ms = statistics.median(times[kind][w])
            ratio = statistics.median(t / p for t, p in zip(times[kind][w], plain, strict=True))
            cells.append(f"{ms:.1f}" if kind == "plain" else f"{ms:.1f} ({ratio:.2f}×)")
        lines.append(f"| {w} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    cli("repack", __doc__ or "", run, markdown, steps=96)


if __name__ == "__main__":
    main()
