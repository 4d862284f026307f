"""Next-token distributions for many related prefixes at once: the beams of a search.

A beam search asks, at every step, for the next-token distribution after each live beam, and
the beams share almost everything: the prompt, and most of their tokens. ``PrefixTree`` keeps a
second llama.cpp context over the same weights whose KV cache is *unified*: a cached token can
belong to many sequences, so a beam that forks costs a ``seq_cp`` (a tag on the shared cells),
not a copy, and a step evaluates only each beam's new token, every beam in one ``llama_decode``.

It trades the main context's batch invariance for that (cells of other sequences can change
the order in which attention sums): logits can differ in the last bits from those of a request
run alone, and with the beams beside them. Callers that need stable results cache them per
query (``engine.seal``). Not thread-safe: the generator runs it on its model thread.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ragserve.generation.base import TopToken

SEQS = 128  # sequences the tree holds: live beams of the queries searched together, and cached
CELLS = 8192  # KV cells shared by all of them (about 18 KiB each for the bundled model)
BATCH = 128  # tokens per llama_decode call (its logits buffer: BATCH x 262k floats)


@dataclass
class _Slot:
    id: int
    tokens: list[int] = field(default_factory=list)
    used: int = 0  # the call that last used it, for least-recently-used eviction


def common_prefix(a: Sequence[int], b: Sequence[int], limit: int) -> int:
    """Length of the common prefix of ``a`` and ``b``, at most ``limit``, by bisection on
    slice equality (C-speed on lists)."""
    hi = min(len(a), len(b), limit)
    if a[:hi] == b[:hi]:
        return hi
    lo = 0
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


class PrefixTree:
    def __init__(self, model, n_vocab: int, n_threads: int, cells: int = CELLS):  # type: ignore[no-untyped-def]
        import llama_cpp
        from llama_cpp import _internals
        from llama_cpp._utils import suppress_stdout_stderr

        cparams = llama_cpp.llama_context_default_params()
        self.cells = cells
        cparams.n_ctx = cells
        cparams.n_seq_max = SEQS
        cparams.kv_unified = True
        cparams.swa_full = True
        cparams.n_batch = cparams.n_ubatch = BATCH
        cparams.n_threads = cparams.n_threads_batch = n_threads
        cparams.no_perf = True
        with suppress_stdout_stderr(disable=False):
            self.ctx = _internals.LlamaContext(model=model, params=cparams, verbose=False)
        self.batch = _internals.LlamaBatch(n_tokens=BATCH, embd=0, n_seq_max=1, verbose=False)
        self.n_vocab = n_vocab
        self.slots = [_Slot(i) for i in range(SEQS)]
        self.calls = 0
        self.stats = {"prefixes": 0, "evaluated_tokens": 0, "decode_calls": 0}

    def close(self) -> None:
        self.ctx.close()
        self.batch.close()

    def topk(self, prefixes: Sequence[Sequence[int]], m: int) -> list[list[TopToken]]:
        """The ``m`` most likely next tokens after each prefix (a call per ``SEQS // 2`` of
        them at most, so every prefix of a call has its own sequence)."""
        lists = [list(p) for p in prefixes]
        unique = list(dict.fromkeys(tuple(p) for p in lists))
        found: dict[tuple[int, ...], list[TopToken]] = {}
        width = SEQS // 2
        for start in range(0, len(unique), width):
            group = [list(p) for p in unique[start : start + width]]
            for p, tops in zip(group, self._call(group, m), strict=True):
                found[tuple(p)] = tops
        return [found[tuple(p)] for p in lists]

    def _call(self, prefixes: list[list[int]], m: int) -> list[list[TopToken]]:
        shared = len(prefixes[0]) - 1
        for p in prefixes[1:]:
            shared = common_prefix(prefixes[0], p, shared)
        held = max(common_prefix(s.tokens, prefixes[0], shared) for s in self.slots)
        if len(prefixes) > 1 and shared >= 2 and held < shared:
            # What all share is evaluated once, then forked, not once per prefix.
            self._call([prefixes[0][:shared]], 1)
        self.calls += 1
        plans = self._plan(prefixes)
        try:
            return self._evaluate(prefixes, plans, m)
        except _NoRoom:
            self.forget()
        try:
            return self._evaluate(prefixes, self._plan(prefixes), m)
        except _NoRoom:
            self.forget()
            if len(prefixes) == 1:
                raise RuntimeError(
                    f"a {len(prefixes[0])}-token prefix does not fit the {self.cells} KV cells"
                    " kept for next_token_topk"
                ) from None
        half = len(prefixes) // 2  # together they do not fit: half at a time
        return self._call(prefixes[:half], m) + self._call(prefixes[half:], m)

    def _plan(self, prefixes: list[list[int]]) -> list[tuple[_Slot, int]]:
        """A sequence for each prefix and how many of its tokens that sequence already holds.

        A prefix extends a cached sequence in place when that sequence is a prefix of it and no
        other prefix of this call took it; otherwise it forks the best match into a free one.
        """
        claimed: set[int] = set()
        sources: set[int] = set()
        plans: list[tuple[_Slot, int, _Slot | None]] = []
        for p in prefixes:
            limit = len(p) - 1  # the last token is evaluated again: its logits are the answer
            best, best_len, best_key = None, 0, (0, False, False)
            for s in self.slots:
                if s.tokens:
                    n = common_prefix(s.tokens, p, limit)
                    # longest match; then one free to extend in place
                    key = (n, s.id not in claimed, n == len(s.tokens))
                    if n > 0 and key > best_key:
                        best, best_len, best_key = s, n, key
            if best is not None and best.id not in claimed and best_len == len(best.tokens):
                claimed.add(best.id)
                plans.append((best, best_len, None))
            else:
                if best is not None:
                    sources.add(best.id)
                plans.append((None, best_len, best))  # type: ignore[arg-type]
        busy = claimed | sources
        free = sorted(
            (s for s in self.slots if s.id not in busy), key=lambda s: (bool(s.tokens), s.used)
        )
        out: list[tuple[_Slot, int]] = []
        ctx = self.ctx
        for slot, keep, src in plans:
            if slot is None:
                slot = free.pop(0)
                ctx.kv_cache_seq_rm(slot.id, -1, -1)
                slot.tokens = []
                if src is not None:
                    ctx.kv_cache_seq_cp(src.id, slot.id, 0, keep)
                    slot.tokens = src.tokens[:keep]
                else:
                    keep = 0
            out.append((slot, keep))
        for slot, keep in out:
            if len(slot.tokens) > keep:
                ctx.kv_cache_seq_rm(slot.id, keep, -1)
                del slot.tokens[keep:]
        return out

    def forget(self, keep: Sequence[int] = ()) -> None:
        """Drop every cached sequence but the longest cached part of ``keep``.

        After this, where new tokens land in the KV cells depends only on what comes next, so
        the same calls give the same logits: call it before each search.
        """
        best = max(self.slots, key=lambda s: common_prefix(s.tokens, keep, len(keep)))
        held = common_prefix(best.tokens, keep, len(keep))
        for s in self.slots:
            if s is best and held > 0:
                self.ctx.kv_cache_seq_rm(s.id, held, -1)
                del s.tokens[held:]
            else:
                self.ctx.kv_cache_seq_rm(s.id, -1, -1)
                s.tokens = []

    def _evaluate(
        self, prefixes: list[list[int]], plans: list[tuple[_Slot, int]], m: int
    ) -> list[list[TopToken]]:
        import llama_cpp

        work = [(i, slot, pos, tok) for i, (slot, keep) in enumerate(plans)
                for pos, tok in enumerate(prefixes[i][keep:], start=keep)]  # fmt: skip
        out: list[list[TopToken]] = [[] for _ in prefixes]
        b = self.batch.batch
        for start in range(0, len(work), BATCH):
            chunk = work[start : start + BATCH]
            rows: list[tuple[int, int]] = []
            for n, (i, slot, pos, tok) in enumerate(chunk):
                b.token[n] = tok
                b.pos[n] = pos
                b.n_seq_id[n] = 1
                b.seq_id[n][0] = slot.id
                last = pos == len(prefixes[i]) - 1
                b.logits[n] = last
                if last:
                    rows.append((n, i))
            b.n_tokens = len(chunk)
            rc = llama_cpp.llama_decode(self.ctx.ctx, b)
            if rc == 1:
                raise _NoRoom
            if rc != 0:
                raise RuntimeError(f"llama_decode failed with status {rc}")
            self.stats["decode_calls"] += 1
            if rows:
                ptr = llama_cpp.llama_get_logits(self.ctx.ctx)  # the flagged rows, in order
                logits = np.ctypeslib.as_array(ptr, shape=(len(rows), self.n_vocab))
                for (_, i), tops in zip(rows, top_rows(logits, m), strict=True):
                    out[i] = tops
        self.stats["prefixes"] += len(prefixes)
        self.stats["evaluated_tokens"] += len(work)
        for (slot, _), p in zip(plans, prefixes, strict=True):
            slot.tokens = list(p)
            slot.used = self.calls
        return out


def top_rows(logits: np.ndarray, m: int) -> list[list[TopToken]]:
    """``top_tokens`` of every row at once, in torch: 5x numpy's time on 262k-wide rows."""
    import torch

    x = torch.from_numpy(logits)
    lse = torch.logsumexp(x, dim=1, keepdim=True)
    values, ids = torch.topk(x, min(m, x.shape[1]), dim=1)
    out = []
    for lps, toks in zip((values - lse).tolist(), ids.tolist(), strict=True):
        row = sorted(zip(lps, toks, strict=True), key=lambda t: (-t[0], t[1]))
        out.append([TopToken(t, lp) for lp, t in row])
    return out


class _NoRoom(Exception):
    """The KV cells are full: forget the cache and evaluate the call from scratch."""
