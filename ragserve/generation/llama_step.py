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
- flash attention over an f16 or f32 K cache splits a lone sequence's KV cache across threads
  from 512 cells, and tiles prompt pieces of 64 rows or more: the backend keeps keys in bf16,
  for which ggml always takes its row path (``llama_cpp.LlamaCppGenerator``);
- attention without flash attention runs another kernel for a one-token piece of a sequence
  than for a wider one. The backend no longer runs it but keeps the rule it asked for
  (unmeasured whether flash attention still needs it): generated tokens always go one at a
  time, prompt tokens always in pieces of two or more, and the two never share a
  ``llama_decode`` call (llama.cpp would split a mixed call into equal shares per sequence).
  Several prompts do share one, in equal shares (``prompt_calls``): measured, logits are
  bit-identical however a prompt was cut into pieces of two or more.

A token's logits are then bit-identical whether its request runs alone or beside 15 others.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Sequence
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


class Chain:
    """A request's decode steps, continued on the worker thread as soon as a token is picked.

    ``follow(result)`` runs there on each pick's result and gives the tokens of the next job
    (the picked token) or ``None`` (end of generation, budget spent). The event loop is then
    off the path between two steps of a stream: no thread hand-off back to it for the next
    submission, and none back to the worker for the launch (together about a millisecond a
    token on a busy 2-core host, where llama.cpp's decode of the bundled model takes 16).
    ``stopped`` is set by the request before it truncates its cache: no step of the chain
    runs after that truncation, since the worker checks it before every step.
    """

    def __init__(self, follow: Callable[[Any], Sequence[int] | None]):
        self.follow = follow
        self.stopped = False


@dataclass
class Job:
    """Append ``tokens`` to sequence ``seq`` at ``pos``; resolves to ``pick`` of the logits
    after the last token, or with a ``chain`` to ``(pick's result, the next job's future or
    None)``."""

    seq: int
    pos: int
    tokens: list[int]
    future: asyncio.Future[Any]
    pick: Pick
    chain: Chain | None = None

    def live(self) -> bool:
        return not (
            self.future.done()
            or self.future.get_loop().is_closed()
            or (self.chain is not None and self.chain.stopped)
        )


@dataclass
class _Call:
    """A function to run on the worker thread between steps (cache edits, closing)."""

    fn: Callable  # type: ignore[type-arg]
    args: tuple[Any, ...]
    future: asyncio.Future[Any]


def _settle(future: asyncio.Future[Any], result: Any) -> None:
    """Resolve ``future`` with a result or a ``_Failed`` (on its event loop), unless it is
    already done."""
    if future.done():
        return
    if isinstance(result, _Failed):
        future.set_exception(result.error)
    else:
        future.set_result(result)


def _settle_all(pairs: list[tuple[asyncio.Future[Any], Any]]) -> None:
    for future, result in pairs:
        _settle(future, result)


def _post(loop: asyncio.AbstractEventLoop, fn: Callable, *args: Any) -> None:  # type: ignore[type-arg]
    with contextlib.suppress(RuntimeError):  # a closed event loop: nobody waits
        loop.call_soon_threadsafe(fn, *args)


@dataclass
class StepStats:
    steps: int = 0
    decode_calls: int = 0
    tokens: int = 0
    widths: dict[int, int] = field(default_factory=dict)  # jobs per step -> steps


class StepLoop:
    """Batches jobs from many requests into model steps on one worker thread of its own.

    llama.cpp is not thread-safe, so every call into the context happens on that thread. The
    event loop queues jobs and calls; what one loop iteration queues reaches the worker at once
    (``_flush``), so requests that arrive together, or that one step woke, share the next step.
    The worker runs calls between steps, and goes on with the next step as soon as one ends:
    chained jobs (``Chain``) are ready then, and jobs the event loop queued meanwhile join.
    """

    def __init__(self, ctx, batch, n_vocab: int, max_batch: int):  # type: ignore[no-untyped-def]
        self.ctx = ctx
        self.batch = batch  # a llama_batch of max_batch tokens, one sequence id each
        self.n_vocab = n_vocab
        self.max_batch = max_batch
        self.stats = StepStats()
        self._outbox: list[Job | _Call] = []  # event-loop side, until the iteration's flush
        self._flushing: asyncio.AbstractEventLoop | None = None  # a flush is queued there
        self._cv = threading.Condition()
        self._inbox: list[Job | _Call] = []  # handed over, guarded by _cv
        self._closing = False
        self._ready: list[Job] = []  # worker side: jobs for the coming steps, in arrival order
        self._thread = threading.Thread(target=self._run, name="llama-steps", daemon=True)
        self._thread.start()

    # -- event-loop side --

    def submit(
        self, seq: int, pos: int, tokens: Sequence[int], pick: Pick, chain: Chain | None = None
    ) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        job = Job(seq, pos, list(tokens), loop.create_future(), pick, chain)
        self._queue(loop, job)
        return job.future

    async def call(self, fn: Callable, *args):  # type: ignore[no-untyped-def, type-arg]
        """Run ``fn`` on the worker thread between steps (cache edits, closing)."""
        return await self.queue_call(fn, *args)

    def queue_call(self, fn: Callable, *args: Any) -> asyncio.Future[Any]:  # type: ignore[type-arg]
        """``call`` without waiting: queued calls run in order, whoever waits for them or not."""
        loop = asyncio.get_running_loop()
        item = _Call(fn, args, loop.create_future())
        self._queue(loop, item)
        return item.future

    def _queue(self, loop: asyncio.AbstractEventLoop, item: Job | _Call) -> None:
        self._outbox.append(item)
        # call_soon, not at once: requests woken in this iteration queue their jobs in the
        # callbacks already scheduled, and the worker gets them all together. A loop that
        # ended before its flush ran never flushes: the next one does.
        if self._flushing is None or self._flushing.is_closed():
            self._flushing = loop
            loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flushing = None
        items, self._outbox = self._outbox, []
        with self._cv:
            self._inbox.extend(items)
            self._cv.notify()

    def shutdown(self) -> None:
        with self._cv:
            self._closing = True
            self._cv.notify()
        self._thread.join()

    # -- worker-thread side --

    def _run(self) -> None:
        while True:
            with self._cv:
                while not (self._inbox or self._closing or any(j.live() for j in self._ready)):
                    self._ready.clear()  # only dead jobs left
                    self._cv.wait()
                items, self._inbox = self._inbox, []
                closing = self._closing
            for item in items:
                if isinstance(item, _Call):
                    self._run_call(item)
                else:
                    self._ready.append(item)
            if closing and not items:
                return
            jobs = self._take()
            if not jobs:
                continue
            try:
                self._step(jobs)
            except Exception as e:  # llama_decode failed: every job of the step hears of it
                failed = _Failed(e)
                self._deliver([(j, failed) for j in jobs if not j.future.done()])

    def _run_call(self, call: _Call) -> None:
        try:
            result = call.fn(*call.args)
        except Exception as e:
            result = _Failed(e)
        _post(call.future.get_loop(), _settle, call.future, result)

    def _deliver(self, pairs: list[tuple[Job, Any]]) -> None:
        """Results to their event loops, one callback per loop."""
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], Any]]] = {}
        for job, result in pairs:
            by_loop.setdefault(job.future.get_loop(), []).append((job.future, result))
        for loop, some in by_loop.items():
            _post(loop, _settle_all, some)

    def _take(self) -> list[Job]:
        # Cancelled requests, stopped chains, and those of an event loop that has ended, drop.
        live = [j for j in self._ready if j.live()]
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
        self._ready = [j for j in live if id(j) not in taken]
        return take

    def _follow(self, job: Job, result: Any) -> Any:
        """A chained job's result with the next job of its chain, made ready for the next step."""
        chain = job.chain
        if chain is None or isinstance(result, _Failed):
            return result
        tokens = None if chain.stopped or job.future.done() else chain.follow(result)
        if not tokens:
            return (result, None)
        nxt = Job(
            job.seq, job.pos + len(job.tokens), list(tokens),
            asyncio.Future(loop=job.future.get_loop()), job.pick, chain,
        )  # fmt: skip
        self._ready.append(nxt)
        return (result, nxt.future)

    def _step(self, jobs: list[Job]) -> None:
        """The prompt pieces in calls of equal shares (``prompt_calls``), one run of
        consecutive sequence ids at a time, then the decode tokens in one call.

        Never mixed: llama.cpp splits a call into equal shares per sequence, which would cut
        a one-token piece off a prompt (see ``llama_cpp._Seq``); and it evaluates sequences
        in one pass only while their ids are consecutive. A prompt's first token is handed
        to its request as soon as its call ends, before the decode call: time to first
        token is one pass shorter, and the step takes as long as before.
        """
        prompts = sorted(
            (i for i, j in enumerate(jobs) if len(j.tokens) > 1), key=lambda i: jobs[i].seq
        )
        for run in seq_runs([jobs[i].seq for i in prompts]):
            group = [prompts[k] for k in run]  # indices into jobs
            for call in prompt_calls([len(jobs[i].tokens) for i in group]):
                picked = self._decode([(jobs[group[k]], a, b) for k, a, b in call])
                done = [
                    (jobs[group[k]], self._follow(jobs[group[k]], result))
                    for (k, _, _), result in zip(call, picked, strict=True)
                    if result is not _UNREAD
                ]
                self._deliver(done)
        decodes = [j for j in jobs if len(j.tokens) == 1]
        if decodes:
            picked = self._decode([(j, 0, 1) for j in decodes])
            self._deliver(
                [(j, self._follow(j, result)) for j, result in zip(decodes, picked, strict=True)]
            )
        self.stats.steps += 1
        self.stats.widths[len(jobs)] = self.stats.widths.get(len(jobs), 0) + 1

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
