"""``RagClient``: the blocking client (httpx.Client) over the shared core."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import httpx

from ragserve.client import core
from ragserve.client.errors import APIConnectionError, APITimeoutError
from ragserve.server.protocol import ModelCard, ModelList, RetrieveResponse


class RagClient:
    """A ragserve (or any OpenAI-compatible) server. ``api_key`` goes as a bearer token."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        *,
        api_key: str | None = None,
        timeout: float = 120.0,
        max_retries: int = 2,
        http_client: httpx.Client | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = http_client or httpx.Client(
            base_url=base_url.rstrip("/"), timeout=timeout, headers=headers
        )
        self.retry = core.RetryPolicy(max_retries)

    def __enter__(self) -> RagClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _send(self, call: core.Call) -> httpx.Response:
        attempt = 0
        while True:
            try:
                request = self._http.build_request(call.method, call.path, json=call.body)
                response = self._http.send(request, stream=call.stream)
            except httpx.TimeoutException as e:
                raise APITimeoutError(f"no answer from {self._http.base_url}: {e}") from None
            except httpx.TransportError as e:
                wait = self.retry.delay(attempt, None)
                if wait is None:
                    raise APIConnectionError(f"cannot reach {self._http.base_url}: {e}") from None
                time.sleep(wait)
                attempt += 1
                continue
            if response.status_code < 400:
                return response
            content = response.read()
            response.close()
            error = core.error_for(response.status_code, content, response.headers)
            wait = self.retry.delay(attempt, getattr(error, "retry_after", None))
            if response.status_code not in core.RETRY_STATUSES or wait is None:
                raise error
            time.sleep(wait)
            attempt += 1

    def _events(self, call: core.Call) -> Iterator[core.StreamEvent]:
        response = self._send(call)
        decoder = core.SSEDecoder(call.kind)
        try:
            for line in response.iter_lines():
                yield from decoder.feed(line)
        except httpx.HTTPError as e:
            raise APIConnectionError(f"the stream broke off: {e}") from None
        finally:
            response.close()

    def _run(self, call: core.Call) -> Any:
        if call.stream:
            return self._events(call)
        return core.parse(core.RESPONSES[call.kind], self._send(call).content)

    def chat(
        self,
        messages: Sequence[Mapping[str, str]] | str,
        *,
        model: str | None = None,
        stream: bool = False,
        rag: Mapping[str, Any] | None = None,
        **sampling: Any,
    ) -> Any:
        """A ``ChatCompletion``, or with ``stream=True`` an iterator of typed events."""
        return self._run(core.chat_call(messages, model, stream, rag, sampling))

    def complete(
        self,
        prompt: str,
        *,
        model: str | None = None,
        stream: bool = False,
        rag: Mapping[str, Any] | None = None,
        **sampling: Any,
    ) -> Any:
        """A ``Completion`` (text continued as written), or a stream of typed events."""
        return self._run(core.completion_call(prompt, model, stream, rag, sampling))

    def retrieve(
        self,
        query: str | Sequence[str],
        *,
        k: int = 4,
        retriever: str | None = None,
        index: str | None = None,
    ) -> RetrieveResponse:
        call = core.retrieve_call(query, k, retriever, index)
        return core.parse(RetrieveResponse, self._send(call).content)

    def models(self) -> ModelList:
        return core.parse(ModelList, self._send(core.Call("GET", "/v1/models")).content)

    def model(self, model: str) -> ModelCard:
        return core.parse(ModelCard, self._send(core.Call("GET", f"/v1/models/{model}")).content)

    def health(self) -> dict[str, Any]:
        """``/health`` as JSON; raises ``ServiceUnavailableError`` while loading or draining."""
        return self._send(core.Call("GET", "/health")).json()
