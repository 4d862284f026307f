"""The real server on loopback, driven by httpx and by the official openai client."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from tests.conftest import LiveServer

pytestmark = pytest.mark.integration

QUESTION = "What does the nonlocal statement do?"


def ask(server: LiveServer, **body) -> httpx.Response:  # type: ignore[no-untyped-def]
    return httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=120)


def test_answer_cites_python_docs(live_server: LiveServer) -> None:
    r = ask(
        live_server,
        model="ragserve",
        messages=[{"role": "user", "content": QUESTION}],
        max_tokens=48,
    )
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["content"].strip()
    assert body["usage"]["completion_tokens"] <= 48
    cites = body["citations"]
    assert len(cites) == 4 and cites[0]["index"] == 1
    assert any("nonlocal" in c["id"] for c in cites)
    assert cites[0]["score"] >= cites[-1]["score"]


def test_curl_style_form_content_type_is_parsed_as_json(live_server: LiveServer) -> None:
    payload = {"messages": [{"role": "user", "content": QUESTION}], "max_tokens": 4}
    r = httpx.post(
        f"{live_server.url}/v1/chat/completions",
        content=json.dumps(payload),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        timeout=120,
    )
    assert r.status_code == 200 and r.json()["citations"]


def test_sse_stream_matches_non_streaming(live_server: LiveServer) -> None:
    body = {"messages": [{"role": "user", "content": QUESTION}], "max_tokens": 24}
    full = ask(live_server, **body).json()
    events = []
    streamed = {**body, "stream": True, "stream_options": {"include_usage": True}}
    with httpx.stream(
        "POST", f"{live_server.url}/v1/chat/completions", json=streamed, timeout=120
    ) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data: "):
                events.append(line[6:])
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    *chunks, usage = chunks  # as OpenAI: usage in a last chunk of its own, no choices
    assert usage["choices"] == [] and usage["usage"] == full["usage"]
    assert not any("usage" in c for c in chunks)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert text == full["choices"][0]["message"]["content"]
    assert [c["id"] for c in next(c for c in chunks if c.get("citations"))["citations"]] == [
        c["id"] for c in full["citations"]
    ]
    assert chunks[-1]["choices"][0]["finish_reason"] == full["choices"][0]["finish_reason"]


def test_openai_client_stream_and_not(live_server: LiveServer) -> None:
    client = openai.OpenAI(base_url=f"{live_server.url}/v1", api_key="unused")
    models = [m.id for m in client.models.list().data]
    assert "ragserve" in models
    msgs = [{"role": "user", "content": QUESTION}]
    done = client.chat.completions.create(model="ragserve", messages=msgs, max_tokens=16)
    assert done.choices[0].message.content
    assert done.model_extra and done.model_extra["citations"]
    stream = client.chat.completions.create(
        model="ragserve", messages=msgs, max_tokens=16, stream=True
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == done.choices[0].message.content


def test_openai_client_sees_clear_errors(live_server: LiveServer) -> None:
    client = openai.OpenAI(base_url=f"{live_server.url}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="ragserve", messages=[])
    assert "messages" in err.value.message
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-x", messages=[{"role": "user", "content": "hi"}])


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ({"model": "ragserve"}, 400, "missing required field 'messages'"),
        ({"messages": []}, 400, "messages"),
        ({"messages": [{"role": "robot", "content": "x"}]}, 400, "messages"),
        ({"messages": [{"role": "system", "content": "only system"}]}, 400, "user message"),
        ({"messages": [{"role": "user", "content": "x"}], "rag": {"k": 0}}, 400, "rag.k"),
        (
            {"messages": [{"role": "user", "content": "x"}], "rag": {"retriever": "nope"}},
            400,
            "retriever 'nope' is not available",
        ),
        ({"messages": [{"role": "user", "content": "x"}], "temperature": 5}, 400, "temperature"),
    ],
)
def test_bad_requests_get_openai_shaped_errors(
    live_server: LiveServer, body: dict, status: int, fragment: str
) -> None:
    r = ask(live_server, **body)
    assert r.status_code == status
    err = r.json()["error"]
    assert fragment in err["message"] and err["type"] == "invalid_request_error"
    assert "Traceback" not in r.text


def test_invalid_json_and_unknown_routes(live_server: LiveServer) -> None:
    r = httpx.post(f"{live_server.url}/v1/chat/completions", content=b"{bad", timeout=30)
    assert r.status_code == 400 and r.json()["error"]["message"] == "request body is not valid JSON"
    r = httpx.get(f"{live_server.url}/v1/nothing", timeout=30)
    assert r.status_code == 404 and "error" in r.json()


def test_health_and_models(live_server: LiveServer) -> None:
    h = httpx.get(f"{live_server.url}/health", timeout=30).json()
    assert h["status"] == "ok" and h["index"] == "python-docs" and h["passages"] > 1000
    models = httpx.get(f"{live_server.url}/v1/models", timeout=30).json()
    assert models["object"] == "list" and models["data"][0]["id"] == "ragserve"


def test_server_on_an_openai_upstream(demo_index_dir, llama_upstream: str) -> None:  # type: ignore[no-untyped-def]
    """``--generator openai``: retrieval here, generation on llama.cpp's own server."""
    from ragserve.config import Settings
    from ragserve.server.app import create_app

    settings = Settings(
        index_dir=demo_index_dir, index="python-docs", generator="openai", upstream=llama_upstream
    )
    with LiveServer(create_app(settings)) as server:
        models = httpx.get(f"{server.url}/v1/models", timeout=30).json()
        assert models["data"][-1]["id"] == "gemma-upstream"
        r = ask(server, messages=[{"role": "user", "content": QUESTION}], max_tokens=24)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["choices"][0]["message"]["content"].strip()
        assert any("nonlocal" in c["id"] for c in body["citations"])
        assert body["usage"]["completion_tokens"] <= 24


@pytest.mark.parametrize("stream", [False, True])
def test_prompt_longer_than_the_context_is_a_400(live_server: LiveServer, stream: bool) -> None:
    long_question = "What does nonlocal do? " + "word " * 3000
    r = ask(live_server, messages=[{"role": "user", "content": long_question}], stream=stream)
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["code"] == "context_length_exceeded"
    assert "tokens but the model's context window is 2048 tokens" in err["message"]
