"""The whole API surface on the real server: the official ``openai`` client on every route it
has, text completions, ``/v1/retrieve``, indexes, presets by model id, keys and rate limits,
deadlines, and the Prometheus metrics they leave behind."""

from __future__ import annotations

import dataclasses
import json

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import LiveServer

pytestmark = pytest.mark.integration

QUESTION = "What does the json module do?"
MSGS = [{"role": "user", "content": QUESTION}]


@pytest.fixture(scope="module")
def client(live_server: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{live_server.url}/v1", api_key="unused", max_retries=0)


def sse(url: str, path: str, body: dict, headers: dict | None = None) -> list[dict | str]:  # type: ignore[type-arg]
    with httpx.stream("POST", url + path, json=body, headers=headers, timeout=120) as r:
        assert r.status_code == 200, r.read()
        return [
            line[6:] if line == "data: [DONE]" else json.loads(line[6:])
            for line in r.iter_lines()
            if line.startswith("data: ")
        ]


def metric(url: str, name: str, **labels: str) -> float:
    """A sample's value from ``/metrics`` (0 where it has none yet)."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return 0.0


# -- the openai client, route by route --


def test_openai_client_models_list_and_retrieve(client: openai.OpenAI) -> None:
    ids = [m.id for m in client.models.list().data]
    assert {"ragserve", "ragserve-single", "ragserve-auto", "ragserve-none"} <= set(ids)
    card = client.models.retrieve("ragserve-auto")
    assert card.id == "ragserve-auto" and card.model_extra["rag"]["strategy"] == "auto_rag"
    with pytest.raises(openai.NotFoundError) as e:
        client.models.retrieve("no-such-model")
    assert e.value.body["code"] == "model_not_found"


@pytest.mark.parametrize("usage", [False, True])
def test_openai_client_chat_streams_with_and_without_usage(
    client: openai.OpenAI, usage: bool
) -> None:
    full = client.chat.completions.create(model="ragserve", messages=MSGS, max_tokens=16)
    options = {"stream_options": {"include_usage": True}} if usage else {}
    chunks = list(
        client.chat.completions.create(
            model="ragserve", messages=MSGS, max_tokens=16, stream=True, **options
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    if usage:
        assert chunks[-1].choices == [] and chunks[-1].usage == full.usage
    else:
        assert all(c.usage is None for c in chunks)


@pytest.mark.parametrize("usage", [False, True])
def test_openai_client_completions_stream_with_and_without_usage(
    client: openai.OpenAI, usage: bool
) -> None:
    prompt = "The json module can"
    full = client.completions.create(model="ragserve-none", prompt=prompt, max_tokens=12)
    assert full.object == "text_completion" and full.usage.completion_tokens == 12
    options = {"stream_options": {"include_usage": True}} if usage else {}
    chunks = list(
        client.completions.create(
            model="ragserve-none", prompt=prompt, max_tokens=12, stream=True, **options
        )
    )
    assert "".join(c.choices[0].text for c in chunks if c.choices) == full.choices[0].text
    if usage:
        assert chunks[-1].choices == [] and chunks[-1].usage == full.usage
    else:
        assert all(c.usage is None for c in chunks)


def test_completions_continue_the_prompt_as_written(live_server: LiveServer) -> None:
    """No chat template on a text prompt: the prompt's tokens are the prompt tokens counted."""
    gen = live_server.server.config.app.state.ragserve.generator
    prompt = "def add(a, b):\n    return"
    r = httpx.post(
        f"{live_server.url}/v1/completions",
        json={"model": "ragserve-none", "prompt": prompt, "max_tokens": 6},
        timeout=120,
    ).json()
    assert r["usage"]["prompt_tokens"] == len(gen.tokenize(prompt, special=True))
    assert r["citations"] == []


def test_completions_with_retrieval_put_passages_before_the_prompt(client: openai.OpenAI) -> None:
    r = client.completions.create(model="ragserve", prompt="json.dumps", max_tokens=8)
    cites = r.model_extra["citations"]
    assert len(cites) == 4 and any("json" in c["id"] for c in cites)
    assert r.usage.prompt_tokens > 100  # the passages are in the prompt


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": ""}, "prompt"),
        ({"prompt": ["a", "b"]}, "prompt"),
        ({"prompt": "x", "echo": True}, "echo"),
        ({"prompt": "x", "stream_options": {"include_usage": True}}, "stream_options"),
        ({"prompt": "x", "rag": {"index": "nope"}}, "rag.index"),
    ],
)
def test_completion_bad_input_is_a_clear_4xx(
    live_server: LiveServer, body: dict, param: str
) -> None:  # type: ignore[type-arg]
    r = httpx.post(f"{live_server.url}/v1/completions", json=body, timeout=60)
    assert r.status_code in (400, 404) and r.json()["error"]["param"] == param


# -- presets by model id --


def test_model_id_picks_the_strategy_and_rag_overrides_it(live_server: LiveServer) -> None:
    url = f"{live_server.url}/v1/chat/completions"
    base = {"messages": MSGS, "max_tokens": 8}
    none = httpx.post(url, json={**base, "model": "ragserve-none"}, timeout=120).json()
    assert none["citations"] == [] and none["model"] == "ragserve-none"
    single = httpx.post(url, json={**base, "model": "ragserve"}, timeout=120).json()
    assert len(single["citations"]) == 4
    overridden = {**base, "model": "ragserve-none", "rag": {"strategy": "single", "k": 2}}
    assert len(httpx.post(url, json=overridden, timeout=120).json()["citations"]) == 2
    turns = metric(live_server.url, "ragserve_auto_rag_iterations_count")
    auto = {**base, "model": "ragserve-auto", "rag": {"max_iterations": 1, "trace": True}}
    trace = httpx.post(url, json=auto, timeout=300).json()["rag_trace"]
    assert trace and trace[0]["kind"] == "model"
    assert metric(live_server.url, "ragserve_auto_rag_iterations_count") == turns + 1


def test_speculation_is_counted_in_metrics(live_server: LiveServer) -> None:
    steps = metric(live_server.url, "ragserve_speculation_steps_total", strategy="ralm")
    body = {"model": "ragserve-ralm", "messages": MSGS, "max_tokens": 12,
            "rag": {"speculative": True}}  # fmt: skip
    r = httpx.post(f"{live_server.url}/v1/chat/completions", json=body, timeout=300)
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"]
    assert metric(live_server.url, "ragserve_speculation_steps_total", strategy="ralm") > steps
    accepted = metric(live_server.url, "ragserve_speculation_accepted_steps_total", strategy="ralm")
    rollbacks = metric(live_server.url, "ragserve_speculation_rollbacks_total", strategy="ralm")
    assert accepted + rollbacks > 0


# -- retrieval without generation, and indexes --


def test_retrieve_one_query_and_several(live_server: LiveServer) -> None:
    url = f"{live_server.url}/v1/retrieve"
    one = httpx.post(url, json={"query": "parse a JSON string", "k": 3}, timeout=60).json()
    assert one["object"] == "retrieval" and one["index"] == "python-docs"
    cites = one["data"][0]["citations"]
    assert len(cites) == 3 and [c["index"] for c in cites] == [1, 2, 3]
    assert cites[0]["score"] >= cites[-1]["score"] and "json" in cites[0]["id"]
    several = {"queries": ["gzip compress", "lambda"], "k": 2, "retriever": "bm25"}
    out = httpx.post(url, json=several, timeout=60).json()
    assert out["retriever"] == "bm25" and [d["query"] for d in out["data"]] == several["queries"]
    assert "gzip" in out["data"][0]["citations"][0]["id"]


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({}, 400, "query"),
        ({"query": "x", "queries": ["y"]}, 400, "query"),
        ({"query": "x", "retriever": "nope"}, 400, "rag.retriever"),
        ({"query": "x", "index": "nope"}, 404, "rag.index"),
        ({"query": "x", "k": 0}, 400, "k"),
    ],
)
def test_retrieve_bad_input(live_server: LiveServer, body: dict, status: int, param: str) -> None:  # type: ignore[type-arg]
    r = httpx.post(f"{live_server.url}/v1/retrieve", json=body, timeout=60)
    assert r.status_code == status and r.json()["error"]["param"] == param


def test_indexes_lists_what_is_served(live_server: LiveServer) -> None:
    data = httpx.get(f"{live_server.url}/v1/indexes", timeout=10).json()["data"]
    assert [d["id"] for d in data] == ["python-docs"] and data[0]["default"]
    assert data[0]["passages"] > 1000 and "bm25" in data[0]["retrievers"]


# -- metrics --


def test_metrics_count_requests_tokens_and_retrievals(live_server: LiveServer) -> None:
    url = live_server.url
    labels = {"route": "/v1/chat/completions", "strategy": "single", "status": "200"}
    before = metric(url, "ragserve_requests_total", **labels)
    tokens = metric(url, "ragserve_generation_tokens_total", route=labels["route"])
    searches = metric(url, "ragserve_retrieval_requests_total", retriever="hybrid")
    body = {"messages": MSGS, "max_tokens": 5, "stream": True}
    sse(url, "/v1/chat/completions", body)
    assert metric(url, "ragserve_requests_total", **labels) == before + 1
    assert metric(url, "ragserve_generation_tokens_total", route=labels["route"]) > tokens
    assert metric(url, "ragserve_retrieval_requests_total", retriever="hybrid") == searches + 1
    assert metric(url, "ragserve_time_to_first_token_seconds_count", route=labels["route"]) > 0
    assert metric(url, "ragserve_inter_token_latency_seconds_count", route=labels["route"]) > 0
    httpx.post(f"{url}/v1/chat/completions", json={"messages": []}, timeout=10)
    bad = {"route": "/v1/chat/completions", "status": "400"}
    assert metric(url, "ragserve_requests_total", **bad) >= 1
    text = httpx.get(f"{url}/metrics", timeout=10).text
    for name in ("requests_in_flight", "queue_depth", "request_duration_seconds_bucket",
                 "auto_rag_iterations"):  # fmt: skip
        assert f"ragserve_{name}" in text


# -- keys, rate limits and deadlines: the same engine behind differently configured apps --


@pytest.fixture
def configured(live_server: LiveServer):  # type: ignore[no-untyped-def]
    from ragserve.server.app import create_app

    state = live_server.server.config.app.state.ragserve

    @dataclasses.dataclass
    class Started:
        stack: list[LiveServer]

        def __call__(self, **settings: object) -> LiveServer:
            app = create_app(dataclasses.replace(state.settings, **settings), engine=state.engine)
            server = LiveServer(app).__enter__()
            self.stack.append(server)
            return server

    started = Started([])
    yield started
    for s in started.stack:
        s.__exit__(None, None, None)


KEY_A, KEY_B = "key-a-0123456789", "key-b-0123456789"


def test_api_keys_401_in_openai_shape(configured) -> None:  # type: ignore[no-untyped-def]
    server = configured(api_keys=(KEY_A,))
    r = httpx.post(f"{server.url}/v1/retrieve", json={"query": "json"}, timeout=30)
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert r.headers["www-authenticate"] == "Bearer"
    bad = openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong-key-123", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    good = openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY_A, max_retries=0)
    assert good.chat.completions.create(model="ragserve-none", messages=MSGS, max_tokens=2)
    assert httpx.get(f"{server.url}/health", timeout=10).status_code == 200  # probes stay open


def test_a_key_over_its_rate_gets_429_while_another_is_served(configured) -> None:  # type: ignore[no-untyped-def]
    server = configured(api_keys=(KEY_A, KEY_B), rate_limit=3, rate_period=60.0)

    def retrieve(key: str) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}"}
        return httpx.post(f"{server.url}/v1/retrieve", json={"query": "json"}, headers=headers)

    assert [retrieve(KEY_A).status_code for _ in range(3)] == [200, 200, 200]
    over = retrieve(KEY_A)
    assert over.status_code == 429 and over.json()["error"]["type"] == "rate_limit_error"
    assert 1 <= int(over.headers["retry-after"]) <= 60
    assert retrieve(KEY_B).status_code == 200
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY_A, max_retries=0)
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="ragserve-none", messages=MSGS, max_tokens=2)
    assert metric(server.url, "ragserve_rejections_total", cause="rate_limited") == 2


def test_admin_reload_needs_the_admin_key(configured) -> None:  # type: ignore[no-untyped-def]
    server = configured(admin_key="admin-0123456789")
    url = f"{server.url}/admin/reload"
    assert httpx.post(url, timeout=30).status_code == 401
    ok = httpx.post(url, headers={"Authorization": "Bearer admin-0123456789"}, timeout=60)
    assert ok.status_code == 200 and ok.json() == {"indexes": {"python-docs": "unchanged"}}


def test_deadline_504_before_streaming_and_an_sse_error_after(configured) -> None:  # type: ignore[no-untyped-def]
    server = configured(request_timeout=1.5)
    # A plain continuation runs to max_tokens: far past 1.5 s on this model.
    body = {"model": "ragserve-none", "prompt": "1, 2, 3, 4,", "max_tokens": 1500}
    r = httpx.post(f"{server.url}/v1/completions", json=body, timeout=60)
    assert r.status_code == 504 and r.json()["error"]["code"] == "deadline_exceeded"
    events = sse(server.url, "/v1/completions", {**body, "stream": True})
    assert events[-1] == "[DONE]" and events[-2]["error"]["code"] == "deadline_exceeded"
    assert any(e["choices"][0]["text"] for e in events[:-2])
    assert metric(server.url, "ragserve_rejections_total", cause="deadline") == 1


def test_health_is_503_while_loading(live_server: LiveServer, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The app answers before its model and indexes are ready: 503 until then."""
    import asyncio

    from ragserve.server import app as app_module

    state = live_server.server.config.app.state.ragserve
    gate = asyncio.Event()
    real_load = app_module._load

    async def slow_load(*args):  # type: ignore[no-untyped-def]
        await gate.wait()
        return await real_load(*args)

    monkeypatch.setattr(app_module, "_load", slow_load)
    server = LiveServer(app_module.create_app(state.settings, engine=state.engine))
    server.thread.start()
    try:
        r = _poll(f"{server.url}/health")
        assert r.status_code == 503 and r.json()["status"] == "loading"
        assert r.headers["retry-after"] == "1"
        chat = httpx.post(f"{server.url}/v1/chat/completions", json={"messages": MSGS}, timeout=10)
        assert chat.status_code == 503 and chat.json()["error"]["code"] == "starting"
        server.loop.call_soon_threadsafe(gate.set)
        assert _poll(f"{server.url}/health", want=200).status_code == 200
    finally:
        server.__exit__(None, None, None)


def _poll(url: str, want: int | None = None) -> httpx.Response:
    import time

    deadline = time.monotonic() + 30
    while True:
        try:
            r = httpx.get(url, timeout=5)
            if want is None or r.status_code == want:
                return r
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, f"{url} never answered {want}"
        time.sleep(0.05)
