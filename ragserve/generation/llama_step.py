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
  shares per sequence). Several prompts do share one, in equal shares (``prompt_calls``):
  measured, logits are bit-identical however a prompt was cut into pieces of two or more.

A token's logits are then bit-identical whether its request runs alone or beside 15 others.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

CHUNK = 64  # prompt tokens per step: bounds how long a prefilling request holds back the streams


Pick = Callable[[np.ndarray], Any]  # runs on the worker thread over a view of the logits
_UNREAD = object()  # a prompt piece short of its job's end: no logits, no pick


def ignore_logits(logits: np.ndarray) -> None:
    """For a prompt piece before the last: nobody reads its logits."""


def seq_runs(seqs: Sequence[int]) -> list[list[int]]:
    """Indices of ``seqs`` (sorted) grouped into runs of consecutive ids: llama.cpp evaluates
    the sequences of one call in one pass only while their ids follow each other."""
    runs: list[list[int]] = []
    for k, seq in enumerate(seqs):
        if runs and seq == seqs[runs[-1][-1]] + 1:
            runs[-1].append(k)
        else:
            runs.append([k])
    return runs


def prompt_calls(lengths: Sequence[int]) -> list[list[tuple[int, int, int]]]:
    """Prompt pieces (all of two tokens or more) as ``llama_decode`` calls of equal shares.

    Each call is ``(piece, start, stop)`` triples, every share the length of the shortest
    piece left, so each call ends at least one piece: never more calls than pieces. A piece
    that would keep a single token back sits the call out, since a lone prompt token would
    take the other attention kernel. Prompts that share a call share its pass over the
    weights, and a token's logits do not depend on how its prompt was cut.
    """
    done = [0] * len(lengths)
    calls: list[list[tuple[int, int, int]]] = []
    while True:
        left = {k: n - done[k] for k, n in enumerate(lengths) if n > done[k]}
        if not left:
            return calls
        share = min(left.values())
        call = [(k, done[k], done[k] + share) for k, rest in left.items() if rest - share != 1]
        for k, _, stop in call:
            done[k] = stop
        calls.append(call)


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


def _settle(job: Job, result: Any) -> None:
    """Resolve ``job`` with its pick's result (on the event loop), unless it is already done."""
    if job.future.done():
        return
    if isinstance(result, _Failed):
        job.future.set_exception(result.error)
    else:
        job.future.set_result(result)


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
        done = loop.run_in_executor(self.executor, self._step, jobs, loop)
        done.add_done_callback(lambda f: self._finish(loop, jobs, f))

    def _finish(self, loop, jobs: list[Job], done: asyncio.Future) -> None:  # type: ignore[no-untyped-def, type-arg]
        self._running = None
        error = done.exception()
        results = None if error else done.result()
        for i, job in enumerate(jobs):
            if error is not None:
                if not job.future.done():
                    job.future.set_exception(error)
            else:
                _settle(job, results[i])
        if self._pending:
            self._schedule(loop)

    # -- worker-thread side --

    def _step(self, jobs: list[Job], loop: asyncio.AbstractEventLoop) -> list[Any]:
        """The prompt pieces in calls of equal shares (``prompt_calls``), one run of
        consecutive sequence ids at a time, then the decode tokens in one call.

        Never mixed: llama.cpp splits a call into equal shares per sequence, which would cut
        a one-token piece off a prompt (see ``llama_cpp._Seq``); and it evaluates sequences
        in one pass only while their ids are consecutive. A prompt's first token is handed
        to its request as soon as its call ends, before the decode call: time to first
        token is one pass shorter, and the step takes as long as before.
        """
        out: list[Any] = [None] * len(jobs)

        def deliver(i: int, result: Any) -> None:
            out[i] = result
            with contextlib.suppress(RuntimeError):  # a closed event loop: nobody waits
                loop.call_soon_threadsafe(_settle, jobs[i], result)

        prompts = sorted(
            (i for i, j in enumerate(jobs) if len(j.tokens) > 1), key=lambda i: jobs[i].seq
        )
        for run in seq_runs([jobs[i].seq for i in prompts]):
            group = [prompts[k] for k in run]  # indices into jobs
            for call in prompt_calls([len(jobs[i].tokens) for i in group]):
                picked = self._decode([(jobs[group[k]], a, b) for k, a, b in call])
                for (k, _, _), result in zip(call, picked, strict=True):
                    if result is not _UNREAD:
                        deliver(group[k], result)
        decodes = [i for i, j in enumerate(jobs) if len(j.tokens) == 1]
        if decodes:
            picked = self._decode([(jobs[i], 0, 1) for i in decodes])
            for i, result in zip(decodes, picked, strict=True):
                out[i] = result
        self.stats.steps += 1
        self.stats.widths[len(jobs)] = self.stats.widths.get(len(jobs), 0) + 1
        return out

    def _decode(self, pieces: list[tuple[Job, int, int]]) -> list[Any]:
        """One ``llama_decode`` call over ``job.tokens[start:stop]`` of each piece, sequences
        in id order (llama.cpp wants them so); ``pick`` runs for pieces that end their job,
        the others get ``_UNREAD``."""
        import llama_cpp

        b = self.batch.batch
        order = sorted(range(len(pieces)), key=lambda i: pieces[i][0].seq)
        n = 0
        last: dict[int, int] = {}
        for i in order:
            job, start, stop = pieces[i]
            ends = stop == len(job.tokens)
            for k in range(start, stop):
                b.token[n] = job.tokens[k]
                b.pos[n] = job.pos + k
                b.n_seq_id[n] = 1
                b.seq_id[n][0] = job.seq
                b.logits[n] = ends and k == stop - 1
                n += 1
            if ends:
                last[i] = n - 1
        b.n_tokens = n
        rc = llama_cpp.llama_decode(self.ctx.ctx, b)
        if rc != 0:
            raise RuntimeError(f"llama_decode failed with status {rc}")
        self.stats.decode_calls += 1
        self.stats.tokens += n
        out: list[Any] = []
        for i, (job, _, _) in enumerate(pieces):
            if i not in last:
                out.append(_UNREAD)
                continue
            ptr = llama_cpp.llama_get_logits_ith(self.ctx.ctx, last[i])
            try:
                out.append(job.pick(np.ctypeslib.as_array(ptr, shape=(self.n_vocab,))))
            except Exception as e:  # handed to the job's own request, not the step
                out.append(_Failed(e))
        return out

    def shutdown(self) -> None:
        self.executor.shutdown(wait=True)
