"""The embedded default backend: a GGUF model through llama.cpp, in this process.

One model instance serves every request. llama.cpp is not thread-safe, so all model work runs on
one worker thread; requests take turns in arrival order (an asyncio lock is FIFO), and each token
is a separate hop to that thread so the event loop stays responsive and a closed stream stops at
the next token.

Determinism with prefix reuse: llama.cpp's numbers depend on how tokens are batched (evaluating
300 tokens at once or as 150 + 150 gives logits that differ by more than 1.0 on Gemma 3 270M,
enough to flip a greedy choice). So prompts are always evaluated in chunks aligned to absolute
positions (multiples of ``CHUNK``), and the KV cache is reused only up to a chunk boundary the
cached prompt shares with the new one. The same prompt then gives bit-identical logits whatever
was evaluated before it, which is what greedy determinism and speculative retrieval rely on, and
prompts that share a prefix (next_token_topk, iterative retrieval, chat turns) still skip it.
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
from ragserve.generation.base import GenerationChunk, SamplingParams, TopToken, Usage
from ragserve.generation.models import resolve_gguf
from ragserve.generation.sampling import Sampler, top_tokens
from ragserve.generation.streaming import StopTextStream
from ragserve.generation.tokenizer import tokenizer_identity

CHUNK = 64  # prompt evaluation granularity; 64 costs ~15% prefill speed against 512 on 2 cores


class LlamaCppGenerator:
    """A ``Generator`` over llama-cpp-python; ``model=None`` loads the bundled Gemma 3 270M."""

    def __init__(
        self,
        model: str | Path | None = None,
        *,
        n_ctx: int = 4096,
        n_threads: int | None = None,
        n_batch: int = 512,
    ):
        import llama_cpp

        self.path = resolve_gguf(model)
        try:
            self._llm = llama_cpp.Llama(
                model_path=str(self.path),
                n_ctx=n_ctx,
                n_batch=n_batch,
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
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="llama")
        self._turn = asyncio.Lock()
        self._prompt_len = 0  # cached positions evaluated as a prompt (reusable by chunk)
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
        """The GGUF's own template if it has one; a plain transcript for base models without one.

        The bundled Gemma 3 270M is a base model: asked in Gemma's turn format it mostly repeats
        the question, while "...\nAnswer:" gets it to answer from the passages.
        """
        if self._template:
            return _render_jinja(self._template, messages)
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

    # -- model work, always on the worker thread --

    def _prefill(self, tokens: list[int]) -> np.ndarray:
        """Evaluate a prompt in aligned chunks, reusing whole cached chunks; return last logits."""
        llm = self._llm
        common = 0
        limit = min(self._prompt_len, len(tokens))
        cached = llm.input_ids
        while common < limit and cached[common] == tokens[common]:
            common += 1
        reuse = (common // CHUNK) * CHUNK
        if reuse == len(tokens):  # fully cached: re-evaluate the last chunk to get its logits
            reuse -= CHUNK
        llm.n_tokens = reuse
        pos = reuse
        while pos < len(tokens):
            end = min(len(tokens), (pos // CHUNK + 1) * CHUNK)
            llm.eval(tokens[pos:end])
            pos = end
        self._prompt_len = len(tokens)
        self.stats["prompt_tokens"] += len(tokens)
        self.stats["evaluated_tokens"] += len(tokens) - reuse
        return self._last_logits()

    def _last_logits(self) -> np.ndarray:
        ptr = self._llm._ctx.get_logits_ith(-1)
        return np.ctypeslib.as_array(ptr, shape=(self._n_vocab,)).copy()

    def _decode_one(self, token: int) -> np.ndarray:
        self._llm.eval([token])
        self.stats["evaluated_tokens"] += 1
        return self._last_logits()

    def _piece(self, token: int) -> bytes:
        buf = ctypes.create_string_buffer(64)
        import llama_cpp

        n = llama_cpp.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, False)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = llama_cpp.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, False)
        return buf.raw[:n]

    def _topk_many(self, prefixes: list[list[int]], m: int) -> list[list[TopToken]]:
        # Visiting prefixes in sorted order makes each share the longest prefix with the last.
        order = sorted(range(len(prefixes)), key=lambda i: prefixes[i])
        out: list[list[TopToken]] = [[] for _ in prefixes]
        for i in order:
            out[i] = top_tokens(self._prefill(prefixes[i]), m)
        return out

    async def _run(self, fn, *args):  # type: ignore[no-untyped-def]
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    # -- the Generator seam --

    async def generate(
        self, prompt: str | Sequence[int], params: SamplingParams
    ) -> AsyncIterator[GenerationChunk]:
        ids = self._prompt_ids(prompt)
        if len(ids) >= self.context_length:
            raise ContextLengthError(len(ids), self.context_length)
        budget = min(params.max_tokens, self.context_length - len(ids))
        sample = Sampler(params)
        stream = StopTextStream(params.stop)
        produced = 0
        finish = "length"
        async with self._turn:
            logits = await self._run(self._prefill, ids)
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
                    logits = await self._run(self._decode_one, token)
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
        async with self._turn:
            return await self._run(self._topk_many, lists, m)

    async def aclose(self) -> None:
        async with self._turn:
            await self._run(self._llm.close)
        self._executor.shutdown(wait=True)


def plain_transcript(messages: Sequence[dict[str, str]]) -> str:
    """System text, then turns separated by blank lines, assistant turns as ``Answer: ...``."""
    parts = []
    for m in messages:
        content = m["content"].strip()
        parts.append(f"Answer: {content}" if m["role"] == "assistant" else content)
    return "\n\n".join(parts) + "\nAnswer:"


def _render_jinja(template: str, messages: Sequence[dict[str, str]]) -> str:
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(template).render(
        messages=list(messages), add_generation_prompt=True, bos_token="<bos>", eos_token="<eos>"
    )
