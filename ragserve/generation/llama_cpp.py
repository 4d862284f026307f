"""The embedded default backend: a GGUF model through llama.cpp, in this process, batched.

One llama.cpp context holds ``slots`` sequences over the shared weights, each in its own KV
stream. Every model step advances every active request at once: the next token of each decoding
sequence goes into one ``llama_decode`` call, and the prompt chunks of waiting requests into
another (``llama_step.StepLoop``): eight streams take about half the time per token that eight
steps of one would, and a long prompt is prefilled chunk by chunk between decode steps instead of
starving them. A stream's next step is queued on the step loop's own thread as its token is
picked (``llama_step.Chain``), up to ``AHEAD`` tokens ahead of the request reading them, so the
event loop is off the path between two steps of a stream.

Determinism: by default (``deterministic=True``) the context is built so that a token's logits do
not depend on what else is in its step or how its prompt was chunked (see ``llama_step``). Greedy
output is then bit-identical to the request run alone, which speculative retrieval and the
iterative strategies compare token for token, and a cached prompt prefix can be reused at any
token, not only at chunk boundaries. ``deterministic=False`` keeps llama.cpp's repacked weight
kernels: faster, but outputs that may change with the batch, like llama.cpp's own server.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
from collections import deque
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from ragserve.errors import ContextLengthError, InputError
from ragserve.generation.base import (
    GenerationChunk,
    SamplingParams,
    TopToken,
    Usage,
    completion_budget,
)
from ragserve.generation.chat import plain_transcript, render_jinja
from ragserve.generation.llama_step import CHUNK, Chain, Pick, StepLoop, ignore_logits
from ragserve.generation.models import resolve_gguf
from ragserve.generation.sampling import Sampler
from ragserve.generation.streaming import StopTextStream
from ragserve.generation.tokenizer import tokenizer_identity

# ggml's tiled K-quant matmul takes over from 8 columns up, with other rounding than the
# one-column kernel: a token's logits would change once 8 sequences share a step. ggml reads
# the switch once per process, before the first matmul, so it is set at import.
os.environ.setdefault("GGML_CPU_TILED_MM", "0")
GGML_TYPE_BF16 = 30  # ggml.h; llama_cpp's bindings do not export it

# How far a stream's decode steps may run ahead of the request reading them: a slow reader
# (a busy event loop, a stop string the step loop cannot see) costs at most this many steps.
AHEAD = 2


class _Seq:
    """One sequence of the shared context: its id and the tokens its KV stream holds.

    ``prompt_len``: the leading tokens that were evaluated as prompt, in pieces of two or
    more. Without flash attention llama.cpp picks another attention kernel for a one-token
    piece than for a wider one, so a token's keys and values depend on which kind of piece it
    was in; a generated token (always alone) cannot stand in for the same token read as a
    prompt. Kept with flash attention, where it is not measured (``llama_step``).
    """

    def __init__(self, seq_id: int):
        self.id = seq_id
        self.tokens: list[int] = []
        self.prompt_len = 0

    def reusable(self, tokens: Sequence[int]) -> int:
        """Cached positions a new prompt may keep: its common prompt prefix, leaving two."""
        limit = min(self.prompt_len, len(tokens) - 2)
        common = 0
        while common < limit and self.tokens[common] == tokens[common]:
            common += 1
        return max(common, 0)


def prompt_pieces(start: int, end: int) -> list[tuple[int, int]]:
    """Split positions [start, end) into steps of at most ``CHUNK``, none of one token alone
    (unless the whole prompt is one token), whatever ``start`` the cache allowed."""
    pieces = []
    pos = start
    while pos < end:
        stop = min(end, pos + CHUNK)
        if end - stop == 1:
            stop -= 1
        pieces.append((pos, stop))
        pos = stop
    return pieces


class LlamaCppGenerator:
    """A ``Generator`` over llama-cpp-python; ``model=None`` loads the bundled Gemma 3 270M.

    ``n_ctx`` is the context window of each request; ``slots`` requests decode together (each
    holds ``n_ctx`` tokens of KV cache, about 18 KiB a token for the bundled model).
    """

    def __init__(
        self,
        model: str | Path | None = None,
        *,
        n_ctx: int = 4096,
        n_threads: int | None = None,
        slots: int = 8,
        deterministic: bool = True,
    ):
        import llama_cpp
        from llama_cpp import _internals
        from llama_cpp._utils import suppress_stdout_stderr

        if slots < 1:
            raise InputError("slots must be at least 1", param="slots")
        self.path = resolve_gguf(model)
        self.deterministic = deterministic
        quiet = suppress_stdout_stderr  # llama.cpp logs each context's KV layout on stderr
        mparams = llama_cpp.llama_model_default_params()
        # Repacked weights switch kernels with the batch width: off when outputs must not vary.
        mparams.use_extra_bufts = not deterministic
        try:
            with quiet(disable=False):
                self._model = _internals.LlamaModel(
                    path_model=str(self.path), params=mparams, verbose=False
                )
        except ValueError as e:
            raise InputError(f"failed to load model {self.path}: {e}") from None
        threads = self._threads = n_threads or os.cpu_count() or 1
        cparams = llama_cpp.llama_context_default_params()
        cparams.n_ctx = n_ctx * slots
        cparams.n_seq_max = slots
        cparams.kv_unified = False  # a KV stream per sequence: no request sees another's cells
        cparams.swa_full = True  # sliding-window layers keep every cell, in position order
        cparams.n_batch = cparams.n_ubatch = slots + CHUNK
        cparams.n_threads = cparams.n_threads_batch = threads
        # Flash attention is 5-15% faster a step. ggml's CPU kernel has two other paths for an
        # f16/f32 K cache (KV split across threads for a lone sequence's token once it holds
        # 512 cells, tiles from 64 prompt rows) that change a token's sums with what else is
        # in the step; a bf16 K cache keeps every step on the one row path.
        cparams.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
        if deterministic:
            cparams.type_k = GGML_TYPE_BF16
        cparams.no_perf = True
        try:
            with quiet(disable=False):
                self._ctx = _internals.LlamaContext(
                    model=self._model, params=cparams, verbose=False
                )
        except ValueError as e:
            self._model.close()
            raise InputError(f"failed to create a llama.cpp context: {e}") from None
        self._batch = _internals.LlamaBatch(
            n_tokens=slots + CHUNK, embd=0, n_seq_max=1, verbose=False
        )
        self.model_name = self.path.stem
        self.context_length = n_ctx
        self._n_vocab = self._model.n_vocab()
        self._vocab = self._model.vocab
        self._bos = self._model.token_bos()
        self._is_eog = llama_cpp.llama_vocab_is_eog
        self._template = self._model.metadata().get("tokenizer.chat_template")
        self._seqs = [_Seq(i) for i in range(slots)]
        self._free = list(self._seqs)
        self._waiters: deque[tuple[asyncio.Future[_Seq], Sequence[int]]] = deque()
        self._loop = StepLoop(self._ctx, self._batch, self._n_vocab, slots + CHUNK)
        self.stats = {"prompt_tokens": 0, "evaluated_tokens": 0}
        self._tree: Any = None  # llama_tree.PrefixTree for next_token_topk, made on first use

    @property
    def queue_depth(self) -> int:
        """Requests waiting for a free sequence: every slot is busy (the server's metrics)."""
        return len(self._waiters)

    @property
    def step_stats(self):  # type: ignore[no-untyped-def]
        """Steps, tokens and batch widths so far (benchmarks read it)."""
        return self._loop.stats

    # -- text <-> tokens (read-only on the vocabulary, safe from any thread) --

    def tokenize(self, text: str, *, special: bool = False) -> list[int]:
        return self._model.tokenize(text.encode("utf-8"), add_bos=special, special=special)

    def identity(self) -> dict[str, object]:
        """The tokenizer fingerprint an FM-index built for this model records."""
        return tokenizer_identity(self.model_name, self._n_vocab, self.tokenize)

    def detokenize(self, token_ids: Sequence[int]) -> str:
        return self._model.detokenize(list(token_ids)).decode("utf-8", errors="replace")

    def chat_template(self, messages: Sequence[dict[str, str]]) -> str:
        """The GGUF's own template if it has one; a plain transcript for base models without one."""
        if self._template:
            return render_jinja(self._template, messages)
        return plain_transcript(messages)

    def _prompt_ids(self, prompt: str | Sequence[int]) -> list[int]:
        if isinstance(prompt, str):
            ids = self._model.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)
            if not ids or ids[0] != self._bos:
                ids = [self._bos, *ids]
            return ids
        ids = [int(t) for t in prompt]
        if any(not 0 <= t < self._n_vocab for t in ids):
            raise InputError(f"token ids must be in [0, {self._n_vocab})", param="prompt")
        return ids

    # -- sequences and model work (model calls run on the step loop's thread only) --

    async def _acquire(self, tokens: Sequence[int]) -> _Seq:
        """The free sequence sharing the longest prefix with ``tokens``; waits (FIFO) if none is.

        Plain futures rather than an ``asyncio.Condition``: the model outlives event loops
        (one per ``asyncio.run``), and a condition is bound to the first loop that waits on it.
        """
        if self._free and not self._waiters:
            return self._best(tokens)
        future: asyncio.Future[_Seq] = asyncio.get_running_loop().create_future()
        self._waiters.append((future, tokens))
        try:
            return await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self._release(future.result())  # handed over as we were cancelled
            raise

    def _best(self, tokens: Sequence[int]) -> _Seq:
        # Ties go to the lowest id: llama.cpp evaluates a step in one pass only while the
        # sequences in it have consecutive ids.
        seq = max(self._free, key=lambda s: (s.reusable(tokens), -s.id))
        self._free.remove(seq)
        return seq

    def _release(self, seq: _Seq) -> None:
        self._free.append(seq)
        while self._waiters and self._free:
            future, tokens = self._waiters.popleft()
            if not future.done() and not future.get_loop().is_closed():
                future.set_result(self._best(tokens))

    def _truncate(self, seq: _Seq, n: int) -> None:
        self._ctx.kv_cache_seq_rm(seq.id, n, -1)
        del seq.tokens[n:]
        seq.prompt_len = min(seq.prompt_len, n)

    async def _cut(self, seq: _Seq, n: int) -> None:
        """Truncate ``seq`` at ``n`` and wait until the worker has, even through a cancellation
        (raised once the cut is done). A request hands its sequence back only after its cuts ran:
        a cut still queued then would land on the next request's cache (seen: a cancelled
        request's cut shortened the prompt its successor had planned on, and llama.cpp refused
        the successor's step for positions that no longer followed on)."""
        done = self._loop.queue_call(self._truncate, seq, n)
        cancelled: asyncio.CancelledError | None = None
        while not done.done():
            try:
                await asyncio.shield(done)
            except asyncio.CancelledError as e:
                cancelled = e
        done.result()  # a failed cut raises here
        if cancelled is not None:
            raise cancelled

    async def _prefill(
        self, seq: _Seq, tokens: list[int], pick: Pick, chain: Chain | None = None
    ) -> Any:
        """Evaluate what the sequence's cache lacks of ``tokens``, a step per piece; ``pick``
        of the logits after the last (with ``chain``, the last piece starts the chain)."""
        reuse = seq.reusable(tokens)
        if reuse < len(seq.tokens):
            await self._cut(seq, reuse)
        pieces = prompt_pieces(reuse, len(tokens))
        for k, (start, stop) in enumerate(pieces):
            last = k == len(pieces) - 1
            pos, future = self._submit(
                seq, tokens[start:stop], pick if last else ignore_logits, chain if last else None
            )
            result = await self._wait(seq, pos, future, chain)
            seq.prompt_len = stop
        self.stats["prompt_tokens"] += len(tokens)
        self.stats["evaluated_tokens"] += len(tokens) - reuse
        return result

    def _submit(
        self, seq: _Seq, tokens: list[int], pick: Pick, chain: Chain | None = None
    ) -> tuple[int, asyncio.Future[Any]]:
        pos = len(seq.tokens)
        seq.tokens.extend(tokens)  # claimed now; undone by _wait if the step never runs them
        return pos, self._loop.submit(seq.id, pos, tokens, pick, chain)

    async def _wait(
        self, seq: _Seq, pos: int, future: asyncio.Future[Any], chain: Chain | None = None
    ) -> Any:
        try:
            return await future
        except BaseException:
            if chain is not None:
                chain.stopped = True  # before the truncation: no step of it runs after
            future.cancel()
            await self._cut(seq, pos)
            raise

    @staticmethod
    def _claim(seq: _Seq, token: int, nxt: asyncio.Future[Any]) -> tuple[int, asyncio.Future[Any]]:
        """The chain's next job appends ``token``: the sequence holds it from now on."""
        pos = len(seq.tokens)
        seq.tokens.append(token)
        return pos, nxt

    def _piece(self, token: int) -> bytes:
        import llama_cpp

        buf = ctypes.create_string_buffer(64)
        n = llama_cpp.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, False)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = llama_cpp.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, False)
        return buf.raw[:n]

    # -- the Generator seam --

    async def generate(
        self, prompt: str | Sequence[int], params: SamplingParams
    ) -> AsyncIterator[GenerationChunk]:
        # Tokenizing a long prompt takes milliseconds: off the event loop.
        ids = await asyncio.to_thread(self._prompt_ids, prompt)
        budget = completion_budget(params, len(ids), self.context_length)
        sample = Sampler(params)
        stream = StopTextStream(params.stop)
        produced = 0
        finish = "length"
        seq = await self._acquire(ids)
        made = 0  # tokens picked, counted on the step loop's thread (``produced``: here)

        def follow(token: int) -> list[int] | None:
            # The next decode job, decided on the step loop's thread as the token is picked;
            # none while this request lags AHEAD tokens behind (it queues the next itself).
            nonlocal made
            made += 1
            if made >= budget or (not params.ignore_eos and self._is_eog(self._vocab, token)):
                return None
            return [token] if made - produced <= AHEAD else None

        chain = Chain(follow)
        pending: tuple[int, asyncio.Future[Any]] | None = None
        try:
            # The sampler runs on the step loop's thread, over the logits in place; the next
            # decode step is queued there too (``Chain``), before this token reaches us.
            token, nxt = await self._prefill(seq, ids, sample, chain)
            while True:
                if nxt is not None:
                    pending = self._claim(seq, token, nxt)
                if produced >= budget:
                    break
                if not params.ignore_eos and self._is_eog(self._vocab, token):
                    finish = "stop"
                    break
                produced += 1
                text = stream.feed(self._piece(token))
                if stream.stopped:
                    finish = "stop"
                    if text:
                        yield GenerationChunk(text, [token])
                    break
                yield GenerationChunk(text, [token])
                if produced >= budget:
                    break
                if pending is None:  # the chain waited for us
                    pending = self._submit(seq, [token], sample, chain)
                token, nxt = await self._wait(seq, *pending, chain)
                pending = None
                self.stats["evaluated_tokens"] += 1
        finally:
            chain.stopped = True
            try:
                if pending is not None:  # evaluated or not, its cells go
                    pending[1].cancel()  # a no-op once it is done
                    await self._cut(seq, pending[0])
            finally:
                self._release(seq)
        tail = stream.flush()
        yield GenerationChunk(tail, [], finish, Usage(len(ids), produced))

    async def next_token_topk(
        self, prefixes: Sequence[Sequence[int]], m: int
    ) -> list[list[TopToken]]:
        if m < 1:
            raise InputError("m must be at least 1")
        lists = [self._prompt_ids(p) for p in prefixes]
        for p in lists:
            if not p:
                raise InputError("empty prefix")
            if len(p) >= self.context_length:
                raise ContextLengthError(len(p), self.context_length)
        if not lists:
            return []
        return await self._loop.call(self._tree_topk, lists, m)

    def _tree_topk(self, lists: list[list[int]], m: int) -> list[list[TopToken]]:
        # Made on first use: only beam searches (SEAL) pay for its KV cells.
        if self._tree is None:
            from ragserve.generation.llama_tree import CELLS, PrefixTree

            cells = max(CELLS, 2 * self.context_length)  # a prefix fits, with its beams
            self._tree = PrefixTree(self._model, self._n_vocab, self._threads, cells)
        return self._tree.topk(lists, m)

    async def reset_topk_cache(self, keep: Sequence[int] = ()) -> None:
        """Forget what ``next_token_topk`` cached but ``keep`` (a shared prompt head): a search
        that starts from here gets the same logits every time (``llama_tree.PrefixTree``)."""
        if self._tree is not None:
            await self._loop.call(self._tree.forget, [int(t) for t in keep])

    async def reset_prefix_cache(self) -> None:
        """Forget the prompts idle sequences hold (as vLLM's method of that name): a benchmark
        starts each run cold, not on the cache of the run before it."""
        for seq in list(self._free):
            if seq not in self._free:  # a request took it meanwhile: its cache is not ours
                continue
            self._free.remove(seq)
            try:
                await self._cut(seq, 0)
            finally:
                self._release(seq)
        if self._tree is not None:
            await self._loop.call(self._tree.forget)

    async def aclose(self) -> None:
        """Wait for running requests to hand their sequences back, then free the model."""
        for seq in list(self._seqs):
            await self._acquire(seq.tokens)
        await self._loop.call(self._batch.close)
        if self._tree is not None:
            await self._loop.call(self._tree.close)
        await self._loop.call(self._ctx.close)
        await self._loop.call(self._model.close)
        self._loop.shutdown()
