"""Defects found by probing the running server as a client would (issue 8), one test each, over
real HTTP against the real server (demo index, bundled model)."""

from __future__ import annotations

import contextlib
import json
import math
import select
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import LiveServer

pytestmark = pytest.mark.integration

QUESTION = "What does the nonlocal statement do?"
MESSAGES = [{"role": "user", "content": QUESTION}]
MB = 1 << 20


def post(server: LiveServer, **body: object) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=120)


def health(server: LiveServer) -> dict:
    return httpx.get(f"{server.url}/health", timeout=30).json()


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


@contextlib.contextmanager
def raw_connection(server: LiveServer) -> Iterator[socket.socket]:
    s = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    try:
        yield s
    finally:
        s.close()


def read_response(s: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response with a Content-Length body, read off a raw socket."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            raise ConnectionError(f"connection closed after {data!r}")
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, v in (h.split(":", 1) for h in lines[1:])}
    while len(body) < int(headers.get("content-length", 0)):
        body += s.recv(65536)
    return int(lines[0].split()[1]), headers, body


def request_bytes(method: str, path: str, body: bytes = b"", **headers: str) -> bytes:
    lines = [
        f"{method} {path} HTTP/1.1",
        "Host: 127.0.0.1",
        *(f"{k}: {v}" for k, v in headers.items()),
    ]
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


# 1. A large body: refused with 413 before it is read whole; the server keeps answering.


def test_declared_large_body_is_refused_before_it_is_sent(live_server: LiveServer) -> None:
    with raw_connection(live_server) as s:
        s.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 52428800\r\n\r\n"
        )
        status, headers, body = read_response(s)  # not one body byte sent
    assert status == 413 and headers["connection"] == "close"
    assert "limit of 1048576 bytes" in json.loads(body)["error"]["message"]


def test_chunked_50mb_body_is_cut_off_and_health_stays_fast(live_server: LiveServer) -> None:
    """A 50 MB body without Content-Length: the server stops reading past its limit, /health
    answers meanwhile (it took 40 s before the fix) and memory does not grow with the body."""
    latencies: list[float] = []
    done = threading.Event()

    def probe() -> None:
        with httpx.Client(timeout=30) as c:
            while not done.is_set():
                t0 = time.perf_counter()
                assert c.get(f"{live_server.url}/health").status_code == 200
                latencies.append(time.perf_counter() - t0)
                time.sleep(0.02)

    before = rss_bytes()
    prober = threading.Thread(target=probe)
    prober.start()
    while not latencies:
        time.sleep(0.01)
    sent = 0
    piece = b"a" * (256 << 10)
    try:
        with raw_connection(live_server) as s:
            s.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n"
            )
            s.sendall(b'%x\r\n{"messages": [{"role": "user", "content": "\r\n' % 43)
            while sent < 50 * MB:
                if select.select([s], [], [], 0)[0]:
                    break  # the server answered: stop sending
                try:
                    s.sendall(b"%x\r\n" % len(piece) + piece + b"\r\n")
                except (BrokenPipeError, ConnectionResetError):
                    break
                sent += len(piece)
            status, _, body = read_response(s)
        time.sleep(0.1)  # a probe or two after the cut-off
    finally:
        done.set()
        prober.join()
    assert status == 413, body
    assert sent < 50 * MB  # cut off, not read to the end
    assert latencies and max(latencies) < 0.5, max(latencies)
    assert rss_bytes() - before < 100 * MB


def test_long_prompt_under_the_body_limit_is_refused_by_characters(
    live_server: LiveServer,
) -> None:
    r = post(live_server, messages=[{"role": "user", "content": "x " * 400_000}])
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["param"] == "messages" and err["code"] == "context_length_exceeded"
    assert "characters" in err["message"]


# 2. A client that goes away cancels its request, streamed or not.


def test_dropped_non_streaming_request_stops_generating(live_server: LiveServer) -> None:
    body = {
        "prompt": "Write a long story about a dragon.",
        "max_tokens": 1500,
        "ignore_eos": True,  # runs to max_tokens whatever the model writes
        "rag": {"strategy": "none"},
    }
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{live_server.url}/v1/completions", json=body, timeout=2)
    deadline = time.monotonic() + 10
    while health(live_server)["in_flight"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert health(live_server)["in_flight"] == 0  # 1,500 tokens would take ~15 s
    t0 = time.perf_counter()
    r = post(live_server, messages=MESSAGES, max_tokens=8, rag={"strategy": "none"})
    assert r.status_code == 200 and time.perf_counter() - t0 < 10


# 3. Inputs that gave 500 and a dropped keep-alive connection.


def test_negative_seed_is_accepted_and_out_of_range_seed_is_a_400(live_server: LiveServer) -> None:
    body = {"messages": MESSAGES, "max_tokens": 8, "temperature": 0.8, "rag": {"strategy": "none"}}
    a = post(live_server, **body, seed=-1)
    b = post(live_server, **body, seed=-1)
    assert a.status_code == 200 and a.json()["choices"][0] == b.json()["choices"][0]
    r = post(live_server, **body, seed=2**64)
    assert r.status_code == 400 and r.json()["error"]["param"] == "seed"


def test_tiny_temperature_is_greedy(live_server: LiveServer) -> None:
    body = {"messages": MESSAGES, "max_tokens": 12, "rag": {"strategy": "none"}}
    tiny = post(live_server, **body, temperature=1e-308)
    greedy = post(live_server, **body, temperature=0)
    assert tiny.status_code == 200
    assert tiny.json()["choices"][0]["message"] == greedy.json()["choices"][0]["message"]


def test_a_500_keeps_the_connection_usable(live_server: LiveServer) -> None:
    from ragserve.server.app import create_app

    engine = live_server.server.config.app.state.ragserve.engine
    app = create_app(live_server.server.config.app.state.ragserve.settings, engine=engine)

    async def boom() -> None:
        raise RuntimeError("a bug")

    app.add_api_route("/boom", boom)
    with LiveServer(app) as server, raw_connection(server) as s:
        s.sendall(request_bytes("GET", "/boom"))
        status, headers, body = read_response(s)
        assert status == 500 and json.loads(body)["error"]["message"] == "internal server error"
        assert b"a bug" not in body and headers.get("connection") != "close"
        s.sendall(request_bytes("GET", "/health"))  # the same connection, reused
        assert read_response(s)[0] == 200


# 4. max_tokens is bounded by the context left after the prompt.


def test_max_tokens_over_the_context_is_a_400_naming_it(live_server: LiveServer) -> None:
    r = post(live_server, messages=MESSAGES, max_tokens=1_000_000_000)
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["param"] == "max_tokens" and "context window" in err["message"]
    assert post(live_server, messages=MESSAGES, max_tokens=2**63).status_code == 400


# 5. The OpenAPI document declares the chat body and its errors (fuzzed in test_schema_fuzz).


def test_openapi_declares_chat_body_and_errors(live_server: LiveServer) -> None:
    doc = httpx.get(f"{live_server.url}/openapi.json", timeout=30).json()
    op = doc["paths"]["/v1/chat/completions"]["post"]
    ref = op["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    name = ref.rsplit("/", 1)[1]
    schema = doc["components"]["schemas"][name]
    assert {"messages", "max_tokens", "rag"} <= set(schema["properties"])
    assert {"400", "404", "413", "503"} <= set(op["responses"])
    assert doc["paths"]["/health"].keys() >= {"get", "head"}


# 6. OpenAI fields the server does not implement are refused by name.


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "required"},
         "tools"),
        ({"logprobs": True}, "logprobs"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"frequency_penalty": 0.5}, "frequency_penalty"),
    ],
)  # fmt: skip
def test_unsupported_fields_are_refused_by_name(
    live_server: LiveServer, extra: dict, param: str
) -> None:
    r = post(live_server, messages=MESSAGES, max_tokens=4, **extra)
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["param"] == param and "not supported" in err["message"]


def test_inert_values_of_unsupported_fields_are_fine(live_server: LiveServer) -> None:
    r = post(
        live_server,
        messages=MESSAGES,
        max_tokens=4,
        logprobs=False,
        tools=[],
        frequency_penalty=0,
        response_format={"type": "text"},
    )
    assert r.status_code == 200, r.text


# 7. rag.k within range: passages trimmed to the context, not a 400 blaming messages.


def test_large_k_is_trimmed_to_fit_the_context(live_server: LiveServer) -> None:
    r = post(live_server, messages=MESSAGES, max_tokens=16, rag={"k": 50})
    assert r.status_code == 200, r.text
    body = r.json()
    used = len(body["citations"])
    assert 1 <= used < 50
    assert body["usage"]["prompt_tokens"] + 16 <= 2048
    assert [c["index"] for c in body["citations"]] == list(range(1, used + 1))


def test_max_tokens_leaving_no_room_for_passages_names_max_tokens(
    live_server: LiveServer,
) -> None:
    r = post(live_server, messages=MESSAGES, max_tokens=2040, rag={"k": 4})
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "max_tokens"


# 9. 405 says what is allowed; HEAD /health works.


def test_405_has_allow_and_head_health_is_ok(live_server: LiveServer) -> None:
    r = httpx.get(f"{live_server.url}/v1/chat/completions", timeout=30)
    assert r.status_code == 405 and r.headers["allow"] == "POST"
    assert r.json()["error"]["type"] == "invalid_request_error"
    h = httpx.head(f"{live_server.url}/health", timeout=30)
    assert h.status_code == 200


# 10. Validation messages in the user's terms, strict where OpenAI is strict.


@pytest.mark.parametrize(
    ("body", "param", "fragment"),
    [
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content",
         "must be a string or a list of text parts"),
        ({"messages": [{"role": "user", "content": [{"type": "image"}]}]},
         "messages[0].content[0].type", "'text'"),
        ({"messages": MESSAGES, "stop": 3}, "stop", "must be a string or a list"),
        ({"messages": MESSAGES, "temperature": math.nan}, "temperature", "finite number"),
        ({"messages": MESSAGES, "max_tokens": "8"}, "max_tokens", "valid integer"),
        ({"messages": MESSAGES, "stream": "yes"}, "stream", "valid boolean"),
        ({"messages": MESSAGES, "rag": {"k": "4"}}, "rag.k", "valid integer"),
        ({"messages": MESSAGES, "rag": {"kk": 4}}, "rag.kk", "unknown field"),
    ],
)  # fmt: skip
def test_validation_messages_name_the_field_plainly(
    live_server: LiveServer, body: dict, param: str, fragment: str
) -> None:
    r = httpx.post(
        f"{live_server.url}/v1/chat/completions",
        content=json.dumps(body),  # json.dumps writes NaN as the bare literal clients send
        timeout=60,
    )
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param, err
    assert fragment in err["message"] and err["message"].startswith(param)
    assert ".str" not in err["message"] and "list[" not in err["message"]
