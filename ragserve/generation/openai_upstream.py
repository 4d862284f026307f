"""Generation on any OpenAI-compatible server (a vLLM fleet, llama.cpp's server), over httpx.

One pooled ``httpx.AsyncClient``; bounded connect/read timeouts so a dead upstream fails fast
with a clear error; 429/503 are retried honouring ``Retry-After``. Prompts go to
``/v1/completions`` as text or token ids (so ragserve controls the prompt format), and
``next_token_topk`` is a ``max_tokens=1, logprobs=m`` completion per prefix, sent concurrently so
the upstream batches them. Tokenization uses the upstream's endpoint when it has one (vLLM's
``/tokenize``, llama.cpp's ``/extras/tokenize``), else a local tokenizer. Where the upstream names
tokens by id (vLLM), streamed chunks carry the exact token ids, as the in-process backends' do.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from collections.abc import AsyncIterator, Sequence
from typing import Any

import httpx

from ragserve.errors import ContextLengthError, InputError, UpstreamError
from ragserve.generation.base import (
    GenerationChunk,
    SamplingParams,
    TopToken,
    Usage,
    completion_budget,
)
from ragserve.generation.chat import plain_transcript

RETRY_STATUS = (429, 503)


class OpenAIUpstreamGenerator:
    """A ``Generator`` backed by an OpenAI-compatible HTTP server."""

    def __init__(
        self,
        base_url: str,
        *,
        model: str | None = None,
        api_key: str | None = None,
        tokenizer: Any = None,
        context_length: int | None = None,
        connect_timeout: float = 5.0,
        read_timeout: float = 120.0,
        max_retries: int = 3,
        max_connections: int = 64,
        transport: httpx.AsyncBaseTransport | None = None,
    ):
        self.base_url = base_url.rstrip("/")
        if not self.base_url.endswith("/v1"):
            self.base_url += "/v1"
        self.root_url = self.base_url[: -len("/v1")]
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._timeout = httpx.Timeout(read_timeout, connect=connect_timeout)
        self._client = httpx.AsyncClient(
            headers=headers,
            timeout=self._timeout,
            limits=httpx.Limits(max_connections=max_connections),
            transport=transport,
        )
        self._max_retries = max_retries
        self._local_tokenizer = tokenizer
        self.model_name = model or ""
        self.context_length = context_length or 0
        self._tokenize_path: str | None = None
        self._token_prompts = True
        self._ids_in_stream = False
        self._pieces: dict[str, int] | None = None

    def probe(self) -> None:
        """Ask the upstream for its model, context length and tokenizer endpoint; fail fast.

        Synchronous on purpose: it runs once at start-up, before any event loop owns the pool.
        """
        url = f"{self.base_url}/models"
        try:
            with httpx.Client(timeout=self._timeout, headers=self._client.headers) as client:
                r = client.get(url)
                if r.status_code >= 400:
                    raise UpstreamError(f"upstream {url} answered {r.status_code}: {_message(r)}")
                models = r.json().get("data") or []
                if not models:
                    raise UpstreamError(f"upstream {self.base_url} serves no models")
                card = next((m for m in models if m.get("id") == self.model_name), None)
                if card is None and self.model_name:
                    names = ", ".join(m.get("id", "?") for m in models)
                    raise UpstreamError(f"upstream serves {names}, not {self.model_name!r}")
                card = card or models[0]
                self.model_name = card["id"]
                self.context_length = self.context_length or int(card.get("max_model_len") or 2048)
                # Token-id prompts (vLLM) or text only (llama.cpp's Python server)? And does it
                # name tokens by id (vLLM's return_tokens_as_token_ids), so streams carry ids?
                probe = {"model": self.model_name, "prompt": [1], "max_tokens": 1}
                t = client.post(f"{self.base_url}/completions", json=probe)
                self._token_prompts = t.status_code == 200
                if self._token_prompts:
                    t = client.post(
                        f"{self.base_url}/completions", json={**probe, **_IDS_IN_LOGPROBS}
                    )
                    self._ids_in_stream = t.status_code == 200 and _names_ids(t.json())
                for path in ("/tokenize", "/extras/tokenize"):
                    t = client.post(
                        f"{self.root_url}{path}",
                        json={"model": self.model_name, "prompt": "a", "input": "a"},
                    )
                    if t.status_code == 200:
                        self._tokenize_path = path
                        break
        except httpx.TimeoutException:
            raise UpstreamError(f"upstream {url} timed out") from None
        except httpx.HTTPError as e:
            raise UpstreamError(f"upstream {url} unreachable: {type(e).__name__}") from None

    # -- HTTP with retries --

    @contextlib.asynccontextmanager
    async def _exchange(
        self, method: str, url: str, **kwargs: Any
    ) -> AsyncIterator[httpx.Response]:
        """One request, retried on 429/503 (honouring ``Retry-After``), errors mapped to ours.

        The response is streamed, so a body read by the caller inside the block gets the same
        error mapping.
        """
        for attempt in range(self._max_retries + 1):
            try:
                async with self._client.stream(method, url, **kwargs) as r:
                    if r.status_code in RETRY_STATUS and attempt < self._max_retries:
                        await r.aread()
                        await asyncio.sleep(_retry_delay(r, attempt))
                        continue
                    if r.status_code >= 400:
                        await r.aread()
                        raise _request_error(r, url)
                    yield r
                    return
            except httpx.TimeoutException:
                raise UpstreamError(f"upstream {url} timed out") from None
            except httpx.HTTPError as e:
                raise UpstreamError(f"upstream {url} unreachable: {type(e).__name__}") from None

    async def _request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        async with self._exchange(method, url, **kwargs) as r:
            await r.aread()
            return r

    # -- tokens --

    def tokenize(self, text: str, *, special: bool = False) -> list[int]:
        if self._local_tokenizer is None:
            raise InputError("this upstream generator has no local tokenizer; use atokenize")
        return self._local_tokenizer.tokenize(text)

    async def atokenize(self, text: str) -> list[int]:
        """Tokens as the upstream counts them (its endpoint), else the local tokenizer's."""
        if self._tokenize_path is None:
            return self.tokenize(text)
        r = await self._request(
            "POST",
            f"{self.root_url}{self._tokenize_path}",
            json={
                "model": self.model_name,
                "prompt": text,
                "input": text,
                "add_special_tokens": False,
            },
        )
        data = r.json()
        return list(data.get("tokens") or data.get("ids") or [])

    def detokenize(self, token_ids: Sequence[int]) -> str:
        if self._local_tokenizer is None or not hasattr(self._local_tokenizer, "detokenize"):
            raise InputError("this upstream generator has no local tokenizer to detokenize with")
        return self._local_tokenizer.detokenize(token_ids)

    def identity(self) -> dict[str, object]:
        if self._local_tokenizer is None:
            return {"tokenizer": self.model_name}
        return self._local_tokenizer.identity()

    def chat_template(self, messages: Sequence[dict[str, str]]) -> str:
        local = self._local_tokenizer
        if local is not None and hasattr(local, "chat_template"):
            return local.chat_template(messages)
        return plain_transcript(messages)

    # -- generation --

    def _body(self, prompt: str | Sequence[int], params: SamplingParams) -> dict[str, Any]:
        max_tokens = params.max_tokens
        if not isinstance(prompt, str):  # a text prompt's length is the upstream's to check
            max_tokens = completion_budget(params, len(prompt), self.context_length)
        body: dict[str, Any] = {
            "model": self.model_name,
            "prompt": self._prompt(prompt),
            "max_tokens": max_tokens,
            "temperature": 0.0 if params.greedy else params.temperature,
            "top_p": params.top_p,
        }
        if params.top_k:
            body["top_k"] = params.top_k
        if params.stop:
            body["stop"] = list(params.stop)
        if params.seed is not None:
            body["seed"] = params.seed
        if params.ignore_eos:
            body["ignore_eos"] = True  # vLLM's and llama.cpp's extension
        if self._ids_in_stream:
            body.update(_IDS_IN_LOGPROBS)
        return body

    def _prompt(self, prompt: str | Sequence[int]) -> str | list[int]:
        """Token ids as they are where the upstream takes them; else their text (minus BOS,
        which a text-only upstream adds itself)."""
        if isinstance(prompt, str) or self._token_prompts:
            return prompt if isinstance(prompt, str) else list(prompt)
        ids = list(prompt)
        bos = getattr(self._local_tokenizer, "bos_id", None)
        if ids and ids[0] == bos:
            ids = ids[1:]
        return self.detokenize(ids)

    async def generate(
        self, prompt: str | Sequence[int], params: SamplingParams
    ) -> AsyncIterator[GenerationChunk]:
        body = {
            **self._body(prompt, params),
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        async with self._exchange("POST", f"{self.base_url}/completions", json=body) as r:
            async for chunk in self._parse_stream(r, prompt):
                yield chunk

    async def _parse_stream(
        self, r: httpx.Response, prompt: str | Sequence[int]
    ) -> AsyncIterator[GenerationChunk]:
        finish, usage, produced = "length", None, 0
        async for line in r.aiter_lines():
            if not line.startswith("data:"):
                continue
            payload = line[5:].strip()
            if payload == "[DONE]":
                break
            event = json.loads(payload)
            if "error" in event:
                raise UpstreamError(f"upstream error: {event['error']}")
            if event.get("usage"):
                u = event["usage"]
                usage = Usage(u.get("prompt_tokens", 0), u.get("completion_tokens", 0))
            for choice in event.get("choices") or []:
                text = choice.get("text") or ""
                ids = _stream_ids(choice) if self._ids_in_stream else []
                if text or ids:
                    produced += len(ids) or 1
                    yield GenerationChunk(text, ids)
                if choice.get("finish_reason"):
                    finish = choice["finish_reason"]
        if usage is None:
            n_prompt = (
                len(prompt) if not isinstance(prompt, str) else len(await self.atokenize(prompt))
            )
            usage = Usage(n_prompt, produced)
        yield GenerationChunk("", [], finish, usage)

    async def next_token_topk(
        self, prefixes: Sequence[Sequence[int]], m: int
    ) -> list[list[TopToken]]:
        if m < 1:
            raise InputError("m must be at least 1")
        return list(await asyncio.gather(*(self._topk_one(list(p), m) for p in prefixes)))

    async def _topk_one(self, prefix: list[int], m: int) -> list[TopToken]:
        if len(prefix) >= self.context_length:
            raise ContextLengthError(len(prefix), self.context_length)
        body = {
            "model": self.model_name,
            "prompt": self._prompt(prefix),
            "max_tokens": 1,
            "temperature": 0,
            "logprobs": m,
            "return_tokens_as_token_ids": True,
        }
        data = (await self._request("POST", f"{self.base_url}/completions", json=body)).json()
        top = data["choices"][0]["logprobs"]["top_logprobs"][0]
        out = [TopToken(self._token_id(tok), float(lp)) for tok, lp in top.items()]
        out.sort(key=lambda t: (-t.logprob, t.token_id))
        return out[:m]

    def _token_id(self, token: str) -> int:
        """vLLM names tokens ``token_id:N``; others by their text, mapped with the local vocab."""
        if token.startswith("token_id:"):
            return int(token.split(":", 1)[1])
        if self._pieces is None:
            if self._local_tokenizer is None or not hasattr(self._local_tokenizer, "pieces"):
                raise UpstreamError("upstream returns token text and no local vocabulary maps it")
            self._pieces = self._local_tokenizer.pieces()
        if token not in self._pieces:
            raise UpstreamError(f"upstream token {token!r} is not in the local vocabulary")
        return self._pieces[token]

    async def aclose(self) -> None:
        await self._client.aclose()


# The sampled token's log-probability only, named ``token_id:N``: exact token ids at no cost.
_IDS_IN_LOGPROBS = {"logprobs": 0, "return_tokens_as_token_ids": True}


def _stream_ids(choice: dict[str, Any]) -> list[int]:
    tokens = (choice.get("logprobs") or {}).get("tokens") or []
    return [int(str(t).split(":", 1)[1]) for t in tokens]


def _names_ids(data: dict[str, Any]) -> bool:
    try:
        tokens = data["choices"][0]["logprobs"]["tokens"]
    except (KeyError, IndexError, TypeError):
        return False
    return bool(tokens) and all(str(t).startswith("token_id:") for t in tokens)


def _retry_delay(r: httpx.Response, attempt: int) -> float:
    after = r.headers.get("Retry-After")
    try:
        if after is not None:
            return min(float(after), 30.0)
    except ValueError:
        pass
    return min(0.5 * 2**attempt, 8.0) * (1 + random.random() / 4)


def _message(r: httpx.Response) -> str:
    try:
        err = r.json().get("error")
        if isinstance(err, dict):
            return str(err.get("message", err))
        return str(err or r.text)[:300]
    except ValueError:
        return r.text[:300]


def _request_error(r: httpx.Response, url: str) -> Exception:
    if r.status_code == 400:
        return InputError(f"upstream rejected the request: {_message(r)}")
    return UpstreamError(f"upstream {url} answered {r.status_code}: {_message(r)}")
