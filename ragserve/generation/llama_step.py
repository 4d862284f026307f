"""The llama.cpp step loop: every model step advances every waiting sequence in one batch.

One llama.cpp context holds ``n_seq`` sequences, each in its own KV stream (``kv_unified`` off).
Requests queue *jobs* (tokens to append to their sequence); a step takes the next token of every
decoding sequence plus up to ``CHUNK`` tokens of waiting prompts, evaluates them on the worker
thread, and runs each job's ``pick`` (its sampler, say) there on the logits after its last token,
read in place: the event loop gets a token id, not a megabyte of logits (Gemma's vocabulary is
262k). A long prompt advances one chunk per step, so it never starves the streams beside it.

Batch invariance (``deterministic``): a sequence's logits must not depend on what else is in its
step. Found by measurement on this CPU build (``benchmarks/results/concurrency.md``):

- repacked Q4_K weights (``use_extra_bufts``) run one kernel below 4 columns and another from 4
  up, and ggml's tiled K-quant matmul takes over from 8 columns: both are off;
- a KV cache shared by all sequences lets another request's cells change the order in which
  attention sums, so each sequence gets its own KV stream;
- attention runs another kernel for a one-token piece of a sequence than for a wider one, so
  generated tokens always go one at a time, prompt tokens always in pieces of two or more,
  and the two never share a ``llama_decode`` call (llama.cpp would split a mixed call into equal
  shares per sequence).

A token's logits are then bit-identical whether its request runs alone or beside 15 others.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

CHUNK = 64  # prompt tokens per step: bounds how long a prefilling request holds back the streams


Pick = Callable[[np.ndarray], Any]  # runs on the worker thread over a view of the logits


def ignore_logits(logits: np.ndarray) -> None:
    """For a prompt piece before the last: nobody reads its logits."""


@dataclass
class _Failed:
    """A pick that raised: the error goes to its own job only, not to the whole step."""

    error: Exception


@dataclass
class Job:
    """Append ``tokens`` to sequence ``seq`` at ``pos``; resolves to ``pick`` of the logits
    after the last token."""

    seq: int
    pos: int
    tokens: list[int]
    future: asyncio.Future[Any]
    pick: Pick


@dataclass
class StepStats:
    steps: int = 0
    decode_calls: int = 0
    tokens: int = 0
    widths: dict[int, int] = field(default_factory=dict)  # jobs per step -> steps


class StepLoop:
    """Batches jobs from many requests into model steps on one worker thread.

    llama.cpp is not thread-safe, so every call into the context happens on ``executor``. The
    event loop only queues jobs and resolves futures; a step is launched when the previous one
    has finished and the requests it woke have queued their next tokens.
    """

    def __init__(self, ctx, batch, n_vocab: int, max_batch: int):  # type: ignore[no-untyped-def]
        self.ctx = ctx
        self.batch = batch  # a llama_batch of max_batch tokens, one sequence id each
        self.n_vocab = n_vocab
        self.max_batch = max_batch
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="llama")
        self.stats = StepStats()
        self._pending: list[Job] = []
        self._running: asyncio.AbstractEventLoop | None = None  # the loop awaiting the step
        self._scheduled: asyncio.AbstractEventLoop | None = None  # a launch is queued there

    # -- event-loop side --

    def submit(self, seq: int, pos: int, tokens: Sequence[int], pick: Pick) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        job = Job(seq, pos, list(tokens), loop.create_future(), pick)
        self._pending.append(job)
        self._schedule(loop)
        return job.future

    async def call(self, fn: Callable, *args):  # type: ignore[no-untyped-def, type-arg]
        """Run ``fn`` on the worker thread between steps (cache edits, closing)."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        # call_soon, not a direct launch: requests woken by the last step queue their next
        # token in the callbacks already scheduled, so they all make the same step.
        # An event loop that ended mid-step (or before its launch ran) never hears back.
        if self._running is not None and self._running.is_closed():
            self._running = None
        if self._scheduled is not None and self._scheduled.is_closed():
            self._scheduled = None
        if self._running is None and self._scheduled is None:
            self._scheduled = loop
            loop.call_soon(self._launch)

    def _take(self) -> list[Job]:
        # Cancelled requests, and those of an event loop that has ended, drop out.
        live = [
            j for j in self._pending if not j.future.done() and not j.future.get_loop().is_closed()
        ]
        decodes = [j for j in live if len(j.tokens) == 1]
        take = decodes[: self.max_batch - CHUNK]
        # Prompt pieces, first come first served, up to CHUNK tokens a step (one piece at
        # least): requests arriving together start decoding together, and the streams already
        # decoding wait at most one chunk's worth of prompt.
        budget = CHUNK
        for job in (j for j in live if len(j.tokens) > 1):
            if len(job.tokens) > budget and budget < CHUNK:
                break
            take.append(job)
            budget -= len(job.tokens)
        taken = {id(j) for j in take}
        self._pending = [j for j in live if id(j) not in taken]
        return take

    def _launch(self) -> None:
        self._scheduled = None
        if self._running is not None:
            return
        jobs = self._take()
        if not jobs:
            return
        loop = asyncio.get_running_loop()
        self._running = loop
        done = loop.run_in_executor(self.executor, self._step, jobs)
        done.add_done_callback(lambda f: self._finish(loop, jobs, f))

    def _finish(self, loop, jobs: list[Job], done: asyncio.Future) -> None:  # type: ignore[no-untyped-def, type-arg]
        self._running = None
        error = done.exception()
        results = None if error else done.result()
        for i, job in enumerate(jobs):
            if job.future.done():
                continue
            if error is not None:
                job.future.set_exception(error)
            elif isinstance(results[i], _Failed):
                job.future.set_exception(results[i].error)
            else:
                job.future.set_result(results[i])
        if self._pending:
            self._schedule(loop)

    # -- worker-thread side --

    def _step(self, jobs: list[Job]) -> list[Any]:
        """The decode tokens in one ``llama_decode`` call, each prompt piece in its own.

        Apart because llama.cpp splits a batch into equal shares per sequence, which would
        cut a one-token piece off a prompt (see ``llama_cpp._Seq``).
        """
        out: list[Any] = [None] * len(jobs)
        decodes = [i for i, j in enumerate(jobs) if len(j.tokens) == 1]
        prompts = [[i] for i, j in enumerate(jobs) if len(j.tokens) > 1]
        for group in (decodes, *prompts):
            if group:
                for i, logits in zip(group, self._decode([jobs[i] for i in group]), strict=True):
                    out[i] = logits
        self.stats.steps += 1
        self.stats.widths[len(jobs)] = self.stats.widths.get(len(jobs), 0) + 1
        return out

    def _decode(self, jobs: list[Job]) -> list[Any]:
        """One ``llama_decode`` call, sequences in id order (llama.cpp wants them so)."""
        import llama_cpp

        b = self.batch.batch
        order = sorted(range(len(jobs)), key=lambda i: jobs[i].seq)
        n = 0
        last: dict[int, int] = {}
        for i in order:
            job = jobs[i]
            for k, tok in enumerate(job.tokens):
                b.token[n] = tok
                b.pos[n] = job.pos + k
                b.n_seq_id[n] = 1
                b.seq_id[n][0] = job.seq
                b.logits[n] = k == len(job.tokens) - 1
                n += 1
            last[i] = n - 1
        b.n_tokens = n
        rc = llama_cpp.llama_decode(self.ctx.ctx, b)
        if rc != 0:
            raise RuntimeError(f"llama_decode failed with status {rc}")
        self.stats.decode_calls += 1
        self.stats.tokens += n
        out = []
        for i, job in enumerate(jobs):
            ptr = llama_cpp.llama_get_logits_ith(self.ctx.ctx, last[i])
            try:
                out.append(job.pick(np.ctypeslib.as_array(ptr, shape=(self.n_vocab,))))
            except Exception as e:  # handed to the job's own request, not the step
                out.append(_Failed(e))
        return out

    def shutdown(self) -> None:
        self.executor.shutdown(wait=True)
