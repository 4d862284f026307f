"""Pick a generation backend by name (``--generator``); heavy imports happen only when chosen."""

from __future__ import annotations

from ragserve.config import Settings
from ragserve.errors import InputError
from ragserve.generation.base import Generator

BACKENDS = ("llama_cpp", "openai", "vllm")


def create_generator(settings: Settings) -> Generator:
    if settings.generator == "llama_cpp":
        from ragserve.generation.llama_cpp import LlamaCppGenerator

        return LlamaCppGenerator(
            settings.model,
            n_ctx=settings.n_ctx,
            n_threads=settings.n_threads,
            slots=settings.slots,
            deterministic=settings.deterministic,
        )
    if settings.generator == "openai":
        from ragserve.generation.openai_upstream import OpenAIUpstreamGenerator
        from ragserve.generation.tokenizer import GGUFTokenizer

        if not settings.upstream:
            raise InputError("--generator openai needs --upstream URL (e.g. http://vllm:8000/v1)")
        gen = OpenAIUpstreamGenerator(
            settings.upstream,
            model=settings.model,
            tokenizer=GGUFTokenizer(settings.tokenizer),
        )
        gen.probe()
        return gen
    if settings.generator == "vllm":
        from ragserve.generation.vllm import VLLMGenerator

        # No --model: the bundled GGUF, exported once to a Hugging Face folder.
        return VLLMGenerator(settings.model, max_model_len=settings.n_ctx)
    raise InputError(f"unknown generator {settings.generator!r}; choose from {', '.join(BACKENDS)}")
