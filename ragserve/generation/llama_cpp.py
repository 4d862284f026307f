"""The embedded default backend: a GGUF model through llama.cpp, in this process.

One model instance serves every request. It has a few *slots*, each its own llama.cpp context
(KV cache) over the shared weights, so concurrent requests interleave without evicting each
other's cache. llama.cpp is not thread-safe, so all model work runs on one worker thread; every
step (a 64-token prompt chunk, or one generated token) is a separate job on that thread's FIFO
queue, so concurrent requests take turns step by step (a long prompt cannot starve a stream) and
the event loop never blocks. A request takes the free slot whose cache shares the longest prefix
with its prompt; when all slots are busy it waits its turn.

Determinism with prefix reuse: llama.cpp's numbers depend on how tokens are batched (evaluating
300 tokens at once or as 150 + 150 gives logits that differ by more than 1.0 on Gemma 3 270M,
enough to flip a greedy choice). So prompts are always evaluated in chunks aligned to absolute
positions (multiples of ``CHUNK``), and a cache is reused only up to a chunk boundary it shares
with the new prompt. The same prompt then gives bit-identical logits in any slot, whatever ran
before, which greedy determinism and speculative retrieval rely on; prompts sharing a prefix
(next_token_topk, iterative retrieval, chat turns) still skip it.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ragserve.errors import ContextLengthError, InputError
from ragserve.generation.base import (
    GenerationChunk,
    SamplingParams,
    TopToken,
    Usage,
    completion_budget,
)
from ragserve.generation.chat import plain_transcript, render_jinja
from ragserve.generation.models import resolve_gguf
from ragserve.generation.sampling import Sampler, top_tokens
from ragserve.generation.streaming import StopTextStream
from ragserve.generation.tokenizer import tokenizer_identity

CHUNK = 64  # prompt evaluation granularity; 64 costs ~15% prefill speed against 512 on 2 cores


class _Slot:
    """One KV cache: a llama.cpp context over the shared model, and the tokens it holds."""

    def __init__(self, ctx, batch, n_vocab: int):  # type: ignore[no-untyped-def]
        self.ctx = ctx
        self.batch = batch
        self.n_vocab = n_vocab
        self.tokens: list[int] = []  # tokens whose keys and values are in the cache
        self.prompt_len = 0  # leading tokens evaluated as a prompt, in aligned chunks

    def reusable(self, tokens: Sequence[int]) -> int:
        """Cached positions a new prompt may keep: its common prefix, down to a chunk boundary."""
        limit = min(self.prompt_len, len(tokens))
        common = 0
        while common < limit and self.tokens[common] == tokens[common]:
            common += 1
        reuse = (common // CHUNK) * CHUNK
        return reuse - CHUNK if reuse == len(tokens) else reuse  # keep a chunk for the logits

    def truncate(self, n: int) -> None:
        self.ctx.kv_cache_seq_rm(-1, n, -1)
        del self.tokens[n:]
        self.prompt_len = min(self.prompt_len, n)

    def eval(self, tokens: Sequence[int]) -> np.ndarray:
        """Append ``tokens`` (at most one chunk) to the cache; logits after the last one."""
        self.batch.set_batch(list(tokens), len(self.tokens), False)
        self.ctx.decode(self.batch)
        self.tokens.extend(tokens)
        ptr = self.ctx.get_logits_ith(-1)
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).copy()


class LlamaCppGenerator:
    """A ``Generator`` over llama-cpp-python; ``model=None`` loads the bundled Gemma 3 270M."""

    def __init__(
        self,
        model: str | Path | None = None,
        *,
        n_ctx: int = 4096,
        n_threads: int | None = None,
        slots: int = 4,
    ):
        import llama_cpp
        from llama_cpp import _internals
        from llama_cpp._utils import suppress_stdout_stderr

        self.path = resolve_gguf(model)
        quiet = suppress_stdout_stderr  # llama.cpp logs each context's KV layout on stderr
        try:
            with quiet(disable=False):
                self._llm = llama_cpp.Llama(
                    model_path=str(self.path),
                    n_ctx=n_ctx,
                    n_batch=CHUNK,
                    n_threads=n_threads or os.cpu_count(),
                    verbose=False,
                )
        except ValueError as e:
            raise InputError(f"failed to load model {self.path}: {e}") from None
        self.model_name = self.path.stem
        self.context_length = self._llm.n_ctx()
        self._n_vocab = self._llm.n_vocab()
        self._vocab = llama_cpp.llama_model_get_vocab(self._llm.model)
        self._is_eog = llama_cpp.llama_vocab_is_eog
        self._template = self._llm.metadata.get("tokenizer.chat_template")
        self._slots = [_Slot(self._llm._ctx, self._llm._batch, self._n_vocab)]
        for _ in range(slots - 1):
            with quiet(disable=False):
                ctx = _internals.LlamaContext(
                    model=self._llm._model, params=self._llm.context_params, verbose=False
                )
            batch = _internals.LlamaBatch(n_tokens=CHUNK, embd=0, n_seq_max=1, verbose=False)
            self._slots.append(_Slot(ctx, batch, self._n_vocab))
        self._free = list(self._slots)
        self._freed: asyncio.Condition | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="llama")
        self.stats = {"prompt_tokens": 0, "evaluated_tokens": 0}

    # -- text <-> tokens (read-only on the vocabulary, safe from any thread) --

    def tokenize(self, text: str, *, special: bool = False) -> list[int]:
        return self._llm.tokenize(text.encode("utf-8"), add_bos=special, special=special)

    def identity(self) -> dict[str, object]:
        """The tokenizer fingerprint an FM-index built for this model records."""
        return tokenizer_identity(self.model_name, self._n_vocab, self.tokenize)

    def detokenize(self, token_ids: Sequence[int]) -> str:
        return self._llm.detokenize(list(token_ids)).decode("utf-8", errors="replace")

    def chat_template(self, messages: Sequence[dict[str, str]]) -> str:
        """The GGUF's own template if it has one; a plain transcript for base models without one."""
        if self._template:
            return render_jinja(self._template, messages)
        return plain_transcript(messages)

    def _prompt_ids(self, prompt: str | Sequence[int]) -> list[int]:
        if isinstance(prompt, str):
            ids = self._llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)
            bos = self._llm.token_bos()
            if not ids or ids[0] != bos:
                ids = [bos, *ids]
            return ids
        ids = [int(t) for t in prompt]
        if any(not 0 <= t < self._n_vocab for t in ids):
            raise InputError(f"token ids must be in [0, {self._n_vocab})", param="prompt")
        return ids

    # -- slots and model work (model calls run on the worker thread only) --

    async def _acquire(self, tokens: Sequence[int]) -> _Slot:
        """The free slot sharing the longest prefix with ``tokens``; waits (FIFO) if none is."""
        if self._freed is None:
            self._freed = asyncio.Condition()
        async with self._freed:
            await self._freed.wait_for(lambda: bool(self._free))
            slot = max(self._free, key=lambda s: s.reusable(tokens))
            self._free.remove(slot)
            return slot

    async def _release(self, slot: _Slot) -> None:
        assert self._freed is not None
        async with self._freed:
            self._free.append(slot)
            self._freed.notify()

    async def _run(self, fn, *args):  # type: ignore[no-untyped-def]
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def _prefill(self, slot: _Slot, tokens: list[int]) -> np.ndarray:
        """Evaluate a prompt chunk by chunk (one worker job each); return the last logits."""
        reuse = slot.reusable(tokens)
        await self._run(slot.truncate, reuse)
        pos, logits = reuse, None
        while pos < len(tokens):
            end = min(len(tokens), (pos // CHUNK + 1) * CHUNK)
            logits = await self._run(slot.eval, tokens[pos:end])
            pos = end
        slot.prompt_len = len(tokens)
        self.stats["prompt_tokens"] += len(tokens)
        self.stats["evaluated_tokens"] += len(tokens) - reuse
        assert logits is not None
        return logits

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
        slot = await self._acquire(ids)
        try:
            logits = await self._prefill(slot, ids)
            while produced < budget:
                token = sample(logits)
                if self._is_eog(self._vocab, token):
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
                if produced < budget:
                    logits = await self._run(slot.eval, [token])
                    self.stats["evaluated_tokens"] += 1
        finally:
            await self._release(slot)
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
        # Visiting prefixes in sorted order makes each share the longest prefix with the last.
        order = sorted(range(len(lists)), key=lambda i: lists[i])
        out: list[list[TopToken]] = [[] for _ in lists]
        slot = await self._acquire(lists[order[0]])
        try:
            for i in order:
                out[i] = top_tokens(await self._prefill(slot, lists[i]), m)
        finally:
            await self._release(slot)
        return out

    async def aclose(self) -> None:
        """Wait for running requests to hand their slots back, then free the model."""
        for slot in list(self._slots):
            await self._acquire(slot.tokens)
        for slot in self._slots[1:]:
            await self._run(slot.ctx.close)
            await self._run(slot.batch.close)
        await self._run(self._llm.close)
        self._executor.shutdown(wait=True)
