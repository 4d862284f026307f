"""Pick a generation backend by name (``--generator``); heavy imports happen only when chosen."""

from __future__ import annotations

from ragserve.config import Settings
from ragserve.errors import InputError
from ragserve.generation.base import Generator

BACKENDS = ("llama_cpp",)


def create_generator(settings: Settings) -> Generator:
    if settings.generator == "llama_cpp":
        from ragserve.generation.llama_cpp import LlamaCppGenerator

        return LlamaCppGenerator(settings.model, n_ctx=settings.n_ctx, n_threads=settings.n_threads)
    raise InputError(f"unknown generator {settings.generator!r}; choose from {', '.join(BACKENDS)}")
