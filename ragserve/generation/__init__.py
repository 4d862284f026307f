"""Generation, which tokens: one async, token-streaming seam over llama.cpp, vLLM or an upstream."""

from ragserve.generation.base import (
    GenerationChunk,
    Generator,
    SamplingParams,
    TopToken,
    Usage,
)

__all__ = ["GenerationChunk", "Generator", "SamplingParams", "TopToken", "Usage"]
