"""The ``Generator`` seam: what every backend offers the strategies above it.

Greedy decoding (``temperature == 0``) must be deterministic: the same prompt gives the same
tokens. Speculative retrieval promises identical outputs on top of that promise.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from ragserve.errors import ContextLengthError, InputError

# Temperatures below this are greedy (as in vLLM): dividing logits by 1e-308 overflows to NaN.
MIN_TEMPERATURE = 1e-5


@dataclass(frozen=True)
class SamplingParams:
    """OpenAI-style sampling knobs; the defaults are greedy.

    ``fit_context``: ``max_tokens`` is a default that shrinks to the context left after the
    prompt. Off, as for a ``max_tokens`` a client asked for, a request that cannot fit is refused.
    ``ignore_eos``: generate on past the end-of-generation token, up to ``max_tokens`` (vLLM's
    and llama.cpp's extension of the same name): benchmarks compare servers on equal work.
    """

    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    fit_context: bool = True
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise InputError("max_tokens must be at least 1", param="max_tokens")
        if not 0.0 <= self.temperature <= 2.0:
            raise InputError("temperature must be between 0 and 2", param="temperature")
        if not 0.0 < self.top_p <= 1.0:
            raise InputError("top_p must be in (0, 1]", param="top_p")
        if self.top_k < 0:
            raise InputError("top_k must be non-negative", param="top_k")
        if self.seed is not None and not -(2**63) <= self.seed < 2**63:
            raise InputError("seed must be a 64-bit integer", param="seed")

    @property
    def greedy(self) -> bool:
        return self.temperature < MIN_TEMPERATURE


def completion_budget(params: SamplingParams, prompt_tokens: int, context: int) -> int:
    """Tokens a completion may produce after a prompt of ``prompt_tokens``; raises if none fit."""
    if prompt_tokens >= context:
        raise ContextLengthError(prompt_tokens, context)
    left = context - prompt_tokens
    if params.fit_context:
        return min(params.max_tokens, left)
    if params.max_tokens > left:
        raise InputError(
            f"max_tokens is {params.max_tokens} but the {prompt_tokens}-token prompt leaves"
            f" {left} of the model's {context}-token context window",
            param="max_tokens",
            code="context_length_exceeded",
        )
    return params.max_tokens


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class GenerationChunk:
    """A piece of streamed output. The last chunk carries ``finish_reason`` and ``usage``."""

    text: str
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    usage: Usage | None = None


@dataclass(frozen=True)
class TopToken:
    token_id: int
    logprob: float


@runtime_checkable
class Generator(Protocol):
    """A language model behind one async, token-streaming interface."""

    model_name: str
    context_length: int

    def generate(
        self, prompt: str | Sequence[int], params: SamplingParams
    ) -> AsyncIterator[GenerationChunk]:
        """Stream the continuation of ``prompt``; closing the iterator stops generation."""
        ...

    def tokenize(self, text: str, *, special: bool = False) -> list[int]: ...

    def detokenize(self, token_ids: Sequence[int]) -> str: ...

    def chat_template(self, messages: Sequence[dict[str, str]]) -> str:
        """The model's own chat format, ending where the assistant's reply begins."""
        ...

    async def next_token_topk(
        self, prefixes: Sequence[Sequence[int]], m: int
    ) -> list[list[TopToken]]:
        """The ``m`` most likely next tokens after each prefix, most likely first."""
        ...

    async def aclose(self) -> None: ...
