"""Wire models: OpenAI's request and response shapes plus ragserve's ``rag`` and ``citations``.

Kept apart from serving logic so the client SDK and tests share one definition of the wire.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

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

    strategy: Literal["single", "auto_rag", "ralm", "none"] = "single"
    k: Int = Field(4, ge=1, le=50)
    retriever: str | None = None
    max_iterations: Int | None = Field(None, ge=1, le=20, description="auto_rag; default 5")
    max_passages: Int = Field(2, ge=1, le=10, description="auto_rag: new passages per step")
    demonstrations: bool = Field(True, description="auto_rag: worked examples for base models")
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


def _inert(name: str) -> Any:
    """A field that takes only the values in ``UNSUPPORTED[name]``, documented as such."""

    def document(schema: dict[str, Any]) -> None:
        schema.pop("anyOf", None)
        schema["enum"] = list(UNSUPPORTED[name])

    return Field(None, json_schema_extra=document)


class ChatCompletionRequest(BaseModel):
    model_config = STRICT

    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    max_tokens: Int | None = Field(None, ge=1, le=INT64 - 1)
    max_completion_tokens: Int | None = Field(None, ge=1, le=INT64 - 1)
    temperature: float = Field(0.0, ge=0.0, le=2.0, allow_inf_nan=False)
    top_p: float = Field(1.0, gt=0.0, le=1.0, allow_inf_nan=False)
    top_k: Int = Field(0, ge=0, le=INT64 - 1)
    stop: str | list[str] | None = None
    seed: Int | None = Field(None, ge=-INT64, le=INT64 - 1)
    n: Int = Field(1, ge=1, le=1)
    rag: RagParams = Field(default_factory=RagParams)
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
        for name, inert in UNSUPPORTED.items():
            value = getattr(self, name)
            if not any(value == v and type(value) is type(v) for v in inert):
                return name
        return None


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


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "ragserve"
    root: str | None = None


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
DOCUMENTED_REQUESTS: tuple[type[BaseModel], ...] = (ChatCompletionRequest,)
