"""``AsyncRagClient``: the asyncio client (httpx.AsyncClient) over the shared core."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import httpx

from ragserve.client import core
from ragserve.client.errors import APIConnectionError, APITimeoutError
from ragserve.server.protocol import ModelCard, ModelList, RetrieveResponse


class AsyncRagClient:
    """A ragserve (or any OpenAI-compatible) server. ``api_key`` goes as a bearer token."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        *,
        api_key: str | None = None,
        timeout: float = 120.0,
        max_retries: int = 2,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = http_client or httpx.AsyncClient(
            base_url=base_url.rstrip("/"), timeout=timeout, headers=headers
        )
        self.retry = core.RetryPolicy(max_retries)

    async def __aenter__(self) -> AsyncRagClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._http.aclose()

    async def _send(self, call: core.Call) -> httpx.Response:
        attempt = 0
        while True:
            try:
                request = self._http.build_request(call.method, call.path, json=call.body)
                response = await self._http.send(request, stream=call.stream)
            except httpx.TimeoutException as e:
                raise APITimeoutError(f"no answer from {self._http.base_url}: {e}") from None
            except httpx.TransportError as e:
                wait = self.retry.delay(attempt, None)
                if wait is None:
                    raise APIConnectionError(f"cannot reach {self._http.base_url}: {e}") from None
                await asyncio.sleep(wait)
                attempt += 1
                continue
            if response.status_code < 400:
                return response
            content = await response.aread()
            await response.aclose()
            error = core.error_for(response.status_code, content, response.headers)
            wait = self.retry.delay(attempt, getattr(error, "retry_after", None))
            if response.status_code not in core.RETRY_STATUSES or wait is None:
                raise error
            await asyncio.sleep(wait)
            attempt += 1

    async def _events(self, call: core.Call) -> AsyncIterator[core.StreamEvent]:
        response = await self._send(call)
        decoder = core.SSEDecoder(call.kind)
        try:
            async for line in response.aiter_lines():
                for event in decoder.feed(line):
                    yield event
        except httpx.HTTPError as e:
            raise APIConnectionError(f"the stream broke off: {e}") from None
        finally:
            await response.aclose()

    async def _run(self, call: core.Call) -> Any:
        if call.stream:
            return self._events(call)
        return core.parse(core.RESPONSES[call.kind], (await self._send(call)).content)

    async def chat(
        self,
        messages: Sequence[Mapping[str, str]] | str,
        *,
        model: str | None = None,
        stream: bool = False,
        rag: Mapping[str, Any] | None = None,
        **sampling: Any,
    ) -> Any:
        """A ``ChatCompletion``, or with ``stream=True`` an async iterator of typed events."""
        return await self._run(core.chat_call(messages, model, stream, rag, sampling))

    async def complete(
        self,
        prompt: str,
        *,
        model: str | None = None,
        stream: bool = False,
        rag: Mapping[str, Any] | None = None,
        **sampling: Any,
    ) -> Any:
        """A ``Completion`` (text continued as written), or a stream of typed events."""
        return await self._run(core.completion_call(prompt, model, stream, rag, sampling))

    async def retrieve(
        self,
        query: str | Sequence[str],
        *,
        k: int = 4,
        retriever: str | None = None,
        index: str | None = None,
    ) -> RetrieveResponse:
        call = core.retrieve_call(query, k, retriever, index)
        return core.parse(RetrieveResponse, (await self._send(call)).content)

    async def models(self) -> ModelList:
        return core.parse(ModelList, (await self._send(core.Call("GET", "/v1/models"))).content)

    async def model(self, model: str) -> ModelCard:
        return core.parse(
            ModelCard, (await self._send(core.Call("GET", f"/v1/models/{model}"))).content
        )

    async def health(self) -> dict[str, Any]:
        """``/health`` as JSON; raises ``ServiceUnavailableError`` while loading or draining."""
        return (await self._send(core.Call("GET", "/health"))).json()
