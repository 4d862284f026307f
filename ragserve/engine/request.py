"""A RAG request as strategies see it: chat messages, sampling, and retrieval options."""

from __future__ import annotations

from dataclasses import dataclass, field

from ragserve.errors import InputError
from ragserve.generation.base import SamplingParams

STRATEGIES = ("single", "auto_rag", "ralm", "none")
MAX_ITERATIONS = 20  # the hard cap; servers set a lower bound of their own
MAX_PASSAGES = 10
ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class RagOptions:
    """``strategy="none"`` skips retrieval: the model answers from the messages alone."""

    strategy: str = "single"
    k: int = 4
    retriever: str | None = None
    max_iterations: int = 5  # auto_rag: model turns before the parametric fallback
    max_passages: int = 2  # auto_rag: unread passages per retrieval
    demonstrations: bool = True  # auto_rag: worked examples for base models
    anchor_queries: bool | None = None  # auto_rag: search the question with each query
    evidence_answer: bool | None = None  # auto_rag: answer over the passages read, as single
    grounded_answers: bool | None = None  # auto_rag: a Final Answer the passages lack searches on
    trace: bool = False  # stream every step
    speculative: bool = False  # ralm, auto_rag: speculative retrieval verified in batches
    seal_beam: int | None = None  # seal: beam size for this request (server default if None)
    seal_key_tokens: int | None = None  # seal: longest key, in tokens

    def __post_init__(self) -> None:
        if not 1 <= self.max_iterations <= MAX_ITERATIONS:
            raise InputError(
                f"rag.max_iterations must be between 1 and {MAX_ITERATIONS}",
                param="rag.max_iterations",
            )
        if not 1 <= self.max_passages <= MAX_PASSAGES:
            raise InputError(
                f"rag.max_passages must be between 1 and {MAX_PASSAGES}", param="rag.max_passages"
            )
        if self.strategy not in STRATEGIES:
            raise InputError(
                f"unknown strategy {self.strategy!r}; choose from {', '.join(STRATEGIES)}",
                param="rag.strategy",
            )
        for name, value, hi in (
            ("seal_beam", self.seal_beam, 64),
            ("seal_key_tokens", self.seal_key_tokens, 16),
        ):
            if value is not None and not 1 <= value <= hi:
                raise InputError(f"rag.{name} must be between 1 and {hi}", param=f"rag.{name}")
        if self.k < 1 or self.k > 50:
            raise InputError("rag.k must be between 1 and 50", param="rag.k")


@dataclass(frozen=True)
class RagRequest:
    """``prompt``: a text prompt (``/v1/completions``), continued as written instead of through
    the chat template; ``messages`` then hold it as the one user turn (the question)."""

    messages: list[dict[str, str]]
    params: SamplingParams = field(default_factory=SamplingParams)
    rag: RagOptions = field(default_factory=RagOptions)
    prompt: str | None = None

    @classmethod
    def text(cls, prompt: str, params: SamplingParams, rag: RagOptions) -> RagRequest:
        return cls([{"role": "user", "content": prompt}], params, rag, prompt)

    def __post_init__(self) -> None:
        if not self.messages:
            raise InputError("messages must contain at least one message", param="messages")
        for m in self.messages:
            if m.get("role") not in ROLES:
                raise InputError(
                    f"unsupported message role {m.get('role')!r}; use one of {', '.join(ROLES)}",
                    param="messages",
                )
        if not self.question:
            raise InputError("the last user message is empty", param="messages")

    @property
    def question(self) -> str:
        """The last user message: what retrieval searches for."""
        for m in reversed(self.messages):
            if m["role"] == "user":
                return m["content"].strip()
        raise InputError("messages must contain a user message", param="messages")
