"""Wire models: OpenAI's request and response shapes plus ragserve's ``rag`` and ``citations``.

Kept apart from serving logic so the client SDK and tests share one definition of the wire.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

INT64 = 2**63
# Requests parse strictly, as OpenAI does: "8" is not an integer and "yes" is not a boolean.
STRICT = ConfigDict(strict=True, extra="ignore")


def _not_text(v: Any) -> Any:
    if isinstance(v, (str, bool)):
        raise PydanticCustomError("int_type", "Input should be a valid integer")
    return v


# An integer as JSON Schema has it: 8 and 8.0 are integers, "8", true and 8.5 are not.
Int = Annotated[int, Field(strict=False), BeforeValidator(_not_text)]


class TextPart(BaseModel):
    model_config = STRICT

    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = STRICT

    role: Literal["system", "user", "assistant", "developer"]
    content: str | list[TextPart]

    @field_validator("content", mode="before")
    @classmethod
    def _content_shape(cls, v: Any) -> Any:
        # One message in the user's terms instead of one per member of the union.
        if not isinstance(v, (str, list)):
            raise ValueError("must be a string or a list of text parts")
        return v

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class RagParams(BaseModel):
    """ragserve's extension: how to retrieve for this request."""

    model_config = ConfigDict(strict=True, extra="forbid")

    strategy: Literal["single", "auto_rag", "ralm", "none"] = Field(
        "single", description="default: the model id's preset"
    )
    k: Int = Field(4, ge=1, le=50)
    retriever: str | None = None
    index: str | None = Field(None, description="a served index; default: the preset's")
    max_iterations: Int | None = Field(None, ge=1, le=20, description="auto_rag; default 5")
    max_passages: Int = Field(2, ge=1, le=10, description="auto_rag: new passages per step")
    demonstrations: bool = Field(True, description="auto_rag: worked examples for base models")
    anchor_queries: bool | None = Field(
        None,
        description="auto_rag: search the question with each model query; default: base models",
    )
    evidence_answer: bool | None = Field(
        None,
        description="auto_rag: answer over the passages read, as single does; default: base"
        " models (others give the transcript's Final Answer)",
    )
    grounded_answers: bool | None = Field(
        None,
        description="auto_rag: a Final Answer whose words the passages read do not hold searches"
        " again (with that answer) instead of ending the loop; default: base models",
    )
    trace: bool = Field(False, description="stream each step as a `rag_step` chunk")
    speculative: bool = Field(
        False,
        description="ralm, auto_rag: retrieve from the request's cache first, verify in batches",
    )
    seal_beam: Int | None = Field(None, ge=1, le=64, description="seal: beam size; default 15")
    seal_key_tokens: Int | None = Field(
        None, ge=1, le=16, description="seal: longest generated key in tokens; default 10"
    )


# OpenAI fields this server does not implement: a request that asks for them gets a 400 naming
# the field instead of a silently different answer. Each maps to the values that ask for nothing.
UNSUPPORTED: dict[str, tuple[Any, ...]] = {
    "tools": (None, []),
    "tool_choice": (None, "none", "auto"),
    "functions": (None, []),
    "function_call": (None, "none", "auto"),
    "logprobs": (None, False),
    "top_logprobs": (None, 0),
    "logit_bias": (None, {}),
    "presence_penalty": (None, 0.0),
    "frequency_penalty": (None, 0.0),
    "response_format": (None, {"type": "text"}),
    "audio": (None,),
    "modalities": (None, ["text"]),
    "prediction": (None,),
}


COMPLETION_UNSUPPORTED: dict[str, tuple[Any, ...]] = {
    "echo": (None, False),
    "suffix": (None,),
    "logprobs": (None, 0),
    "best_of": (None, 1),
    "logit_bias": (None, {}),
    "presence_penalty": (None, 0.0),
    "frequency_penalty": (None, 0.0),
}


def _inert(name: str, table: dict[str, tuple[Any, ...]] = UNSUPPORTED) -> Any:
    """A field that takes only the values in ``table[name]``, documented as such."""

    def document(schema: dict[str, Any]) -> None:
        schema.pop("anyOf", None)
        schema["enum"] = list(table[name])

    return Field(None, json_schema_extra=document)


class StreamOptions(BaseModel):
    model_config = STRICT

    include_usage: bool = Field(
        False, description="send usage in a last chunk of its own, with empty `choices`"
    )


class SamplingRequest(BaseModel):
    """What chat and text completions share: sampling, streaming, and ``rag``."""

    model_config = STRICT
    UNSUPPORTED: ClassVar[dict[str, tuple[Any, ...]]] = {}

    model: str | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: Int | None = Field(None, ge=1, le=INT64 - 1)
    temperature: float = Field(0.0, ge=0.0, le=2.0, allow_inf_nan=False)
    top_p: float = Field(1.0, gt=0.0, le=1.0, allow_inf_nan=False)
    top_k: Int = Field(0, ge=0, le=INT64 - 1)
    stop: str | list[str] | None = None
    seed: Int | None = Field(None, ge=-INT64, le=INT64 - 1)
    n: Int = Field(1, ge=1, le=1)
    ignore_eos: bool = Field(
        False, description="generate on to max_tokens past the end (vLLM's and llama.cpp's)"
    )
    rag: RagParams = Field(default_factory=RagParams)

    @field_validator("stop", mode="before")
    @classmethod
    def _stop_list(cls, v: Any) -> list[str] | None:
        if v is None:
            return None
        if isinstance(v, str):
            v = [v]
        if not isinstance(v, list) or not all(isinstance(s, str) for s in v):
            raise ValueError("must be a string or a list of at most 4 strings")
        if len(v) > 4:
            raise ValueError("at most 4 stop sequences")
        return v

    def unsupported(self) -> str | None:
        """The first field set to something this server does not do, if any."""
        if self.stream_options is not None and not self.stream:
            return "stream_options"  # as OpenAI: only with stream
        for name, inert in self.UNSUPPORTED.items():
            value = getattr(self, name)
            if not any(value == v and type(value) is type(v) for v in inert):
                return name
        return None

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


class ChatCompletionRequest(SamplingRequest):
    UNSUPPORTED: ClassVar[dict[str, tuple[Any, ...]]] = UNSUPPORTED

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: Int | None = Field(None, ge=1, le=INT64 - 1)
    # Accepted so that a request asking for them is refused by name (see UNSUPPORTED); the
    # OpenAPI document lists only the values that ask for nothing.
    tools: list[Any] | None = _inert("tools")
    tool_choice: str | dict[str, Any] | None = _inert("tool_choice")
    functions: list[Any] | None = _inert("functions")
    function_call: str | dict[str, Any] | None = _inert("function_call")
    logprobs: bool | None = _inert("logprobs")
    top_logprobs: int | None = _inert("top_logprobs")
    logit_bias: dict[str, Any] | None = _inert("logit_bias")
    presence_penalty: float | None = _inert("presence_penalty")
    frequency_penalty: float | None = _inert("frequency_penalty")
    response_format: dict[str, Any] | None = _inert("response_format")
    audio: dict[str, Any] | None = _inert("audio")
    modalities: list[str] | None = _inert("modalities")
    prediction: dict[str, Any] | None = _inert("prediction")


class CompletionRequest(SamplingRequest):
    """``POST /v1/completions``: a text prompt, continued as written (the chat template is not
    applied); with retrieval, the passages go before it. One prompt per request."""

    UNSUPPORTED: ClassVar[dict[str, tuple[Any, ...]]] = COMPLETION_UNSUPPORTED

    prompt: str | list[str]
    max_tokens: Int | None = Field(16, ge=1, le=INT64 - 1, description="default 16, as OpenAI")
    echo: bool | None = _inert("echo", COMPLETION_UNSUPPORTED)
    suffix: str | None = _inert("suffix", COMPLETION_UNSUPPORTED)
    logprobs: int | None = _inert("logprobs", COMPLETION_UNSUPPORTED)
    best_of: int | None = _inert("best_of", COMPLETION_UNSUPPORTED)
    logit_bias: dict[str, Any] | None = _inert("logit_bias", COMPLETION_UNSUPPORTED)
    presence_penalty: float | None = _inert("presence_penalty", COMPLETION_UNSUPPORTED)
    frequency_penalty: float | None = _inert("frequency_penalty", COMPLETION_UNSUPPORTED)

    @field_validator("prompt", mode="before")
    @classmethod
    def _one_prompt(cls, v: Any) -> Any:
        if isinstance(v, list):
            if len(v) != 1 or not isinstance(v[0], str):
                raise ValueError("must be a string (or a list of exactly one string)")
            v = v[0]
        if isinstance(v, str) and not v.strip():
            raise ValueError("must not be empty")
        return v

    def text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]


class CitationOut(BaseModel):
    index: int
    id: str
    doc_id: str
    title: str
    text: str
    score: float


class UsageOut(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: str | None


def _id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


class TraceStep(BaseModel):
    """One step of an iterative strategy: a model turn, a retrieval, or the parametric fallback."""

    iteration: int
    kind: Literal["model", "retrieval", "parametric"]
    text: str
    query: str | None = None
    passages: list[str] = []
    seconds: float


class ChatCompletion(BaseModel):
    id: str = Field(default_factory=_id)
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[Choice]
    usage: UsageOut
    citations: list[CitationOut] = []
    rag_trace: list[TraceStep] | None = None


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: Delta
    finish_reason: str | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: UsageOut | None = None
    citations: list[CitationOut] | None = None
    rag_step: TraceStep | None = None


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    logprobs: None = None
    finish_reason: str | None


class Completion(BaseModel):
    id: str = Field(default_factory=lambda: f"cmpl-{uuid.uuid4().hex}")
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[CompletionChoice]
    usage: UsageOut
    citations: list[CitationOut] = []
    rag_trace: list[TraceStep] | None = None


class CompletionChunk(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: UsageOut | None = None
    citations: list[CitationOut] | None = None
    rag_step: TraceStep | None = None


class RetrieveRequest(BaseModel):
    """``POST /v1/retrieve``: passages for one query or several, without generating."""

    model_config = ConfigDict(strict=True, extra="forbid")

    query: str | None = Field(None, min_length=1, max_length=4096)
    queries: list[Annotated[str, Field(min_length=1, max_length=4096)]] | None = Field(
        None, min_length=1, max_length=64
    )
    retriever: str | None = Field(None, description="default: the index's default retriever")
    index: str | None = Field(None, description="default: the server's default index")
    k: Int = Field(4, ge=1, le=100)

    def all_queries(self) -> list[str]:
        return [self.query] if self.query is not None else list(self.queries or [])


class RetrievalResult(BaseModel):
    query: str
    citations: list[CitationOut]


class RetrieveResponse(BaseModel):
    object: Literal["retrieval"] = "retrieval"
    index: str
    retriever: str
    data: list[RetrievalResult]


class IndexCard(BaseModel):
    id: str
    object: Literal["index"] = "index"
    default: bool
    passages: int
    documents: int | None = None
    retrievers: list[str]
    default_retriever: str
    built_at: str | None = None
    loaded_at: float


class IndexList(BaseModel):
    object: Literal["list"] = "list"
    data: list[IndexCard]


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "ragserve"
    root: str | None = None
    description: str | None = None
    rag: dict[str, Any] | None = Field(None, description="the preset: how this id retrieves")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody

    @classmethod
    def of(
        cls,
        message: str,
        type_: str,
        param: str | None = None,
        code: str | None = None,
    ) -> dict[str, Any]:
        return cls(
            error=ErrorBody(message=message, type=type_, param=param, code=code)
        ).model_dump()


# Request models that routes parse themselves (to read JSON whatever the Content-Type says),
# added to the OpenAPI document by hand.
DOCUMENTED_REQUESTS: tuple[type[BaseModel], ...] = (ChatCompletionRequest, CompletionRequest)
