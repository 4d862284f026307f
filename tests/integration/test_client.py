"""The Python SDK against the real server: every method, typed stream events, typed errors,
retries that honour ``Retry-After``, and the async client giving the same answers."""

from __future__ import annotations

import asyncio
import dataclasses
import time

import pytest

from ragserve.client import (
    APIConnectionError,
    AsyncRagClient,
    BadRequestError,
    Citations,
    Finish,
    NotFoundError,
    RagClient,
    RateLimitError,
    TextDelta,
    Usage,
)
from ragserve.server.protocol import ChatCompletion, Completion
from tests.conftest import LiveServer, free_port

pytestmark = pytest.mark.integration

QUESTION = "What does the nonlocal statement do?"


@pytest.fixture(scope="module")
def client(live_server: LiveServer):  # type: ignore[no-untyped-def]
    with RagClient(live_server.url) as c:
        yield c


def test_models_health_and_retrieve(client: RagClient) -> None:
    assert "ragserve-auto" in [m.id for m in client.models().data]
    assert client.model("ragserve-none").rag == {"strategy": "none"}
    assert client.health()["status"] == "ok"
    found = client.retrieve(["nonlocal statement", "gzip"], k=2, retriever="bm25")
    assert [len(r.citations) for r in found.data] == [2, 2]
    assert "nonlocal" in found.data[0].citations[0].id


def test_chat_and_its_stream_agree(client: RagClient) -> None:
    full = client.chat(QUESTION, max_tokens=16)
    assert isinstance(full, ChatCompletion) and full.citations
    events = list(client.chat(QUESTION, max_tokens=16, stream=True))
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    assert text == full.choices[0].message.content
    cites = next(e for e in events if isinstance(e, Citations)).citations
    assert [c.id for c in cites] == [c.id for c in full.citations]
    assert isinstance(events[-1], Usage) and events[-1].usage == full.usage
    assert isinstance(events[-2], Finish)


def test_complete_and_typed_errors(client: RagClient) -> None:
    done = client.complete("The json module", model="ragserve-none", max_tokens=6)
    assert isinstance(done, Completion) and done.usage.completion_tokens == 6
    with pytest.raises(NotFoundError) as e:
        client.chat(QUESTION, model="gpt-9")
    assert e.value.code == "model_not_found"
    with pytest.raises(BadRequestError) as bad:
        client.chat(QUESTION, rag={"k": 0})
    assert bad.value.param == "rag.k"


def test_async_client_gives_the_same_answers(live_server: LiveServer, client: RagClient) -> None:
    async def run() -> tuple[str, str]:
        async with AsyncRagClient(live_server.url) as ac:
            full = await ac.chat(QUESTION, max_tokens=12)
            stream = await ac.chat(QUESTION, max_tokens=12, stream=True)
            text = "".join([e.text async for e in stream if isinstance(e, TextDelta)])
            return full.choices[0].message.content, text

    full, streamed = asyncio.run(run())
    assert full == streamed == client.chat(QUESTION, max_tokens=12).choices[0].message.content


def test_retries_wait_what_retry_after_says(live_server: LiveServer) -> None:
    from ragserve.server.app import create_app

    state = live_server.server.config.app.state.ragserve
    settings = dataclasses.replace(state.settings, rate_limit=1, rate_period=1.0)
    with LiveServer(create_app(settings, engine=state.engine)) as server:
        with RagClient(server.url, max_retries=0) as impatient:
            impatient.retrieve("json")
            with pytest.raises(RateLimitError) as e:
                impatient.retrieve("json")
            assert e.value.retry_after == 1
        with RagClient(server.url, max_retries=2) as patient:
            t0 = time.monotonic()
            assert patient.retrieve("gzip").data[0].citations
            assert time.monotonic() - t0 >= 0.5  # it waited for the window, then got through


def test_unreachable_server_is_one_clear_error() -> None:
    c = RagClient(f"http://127.0.0.1:{free_port()}", max_retries=1)
    with c, pytest.raises(APIConnectionError, match="cannot reach"):
        c.models()


# -- the load harness, `ragserve bench serve`, against the real server --


def bench(*args: str) -> int:
    from ragserve.cli import main

    return main(["bench", "serve", "--quiet", "--max-tokens", "8", *args])


def test_bench_serve_closed_loop_writes_vllm_named_fields(
    live_server: LiveServer, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    import json

    data = tmp_path / "prompts.jsonl"
    data.write_text('{"prompt": "What is gzip?"}\nnot json\n{"question": "What is json?"}\n')
    out = tmp_path / "r.json"
    code = bench("--url", live_server.url, "--dataset", str(data), "--num-requests", "6",
                 "--concurrency", "2", "--rag", '{"strategy": "single", "k": 2}',
                 "--goodput", "e2el:60000", "--json", str(out))  # fmt: skip
    assert code == 1  # the bad line is reported, and the run still happens
    res = json.loads(out.read_text())
    assert res["completed"] == 6 and res["failed"] == 0
    assert res["bad_lines"] == [f"{data}:2: not a JSON object with a 'prompt' or 'question'"]
    for key in ("request_throughput", "output_throughput", "mean_ttft_ms", "median_tpot_ms",
                "p99_itl_ms", "p90_e2el_ms", "request_goodput"):  # fmt: skip
        assert res[key] > 0, key
    assert res["mean_retrieval_steps"] == 1 and len(res["ttfts"]) == 6
    assert res["total_output_tokens"] == sum(res["output_lens"]) <= 6 * 8


def test_bench_serve_sweep_plots(live_server: LiveServer, tmp_path) -> None:  # type: ignore[no-untyped-def]
    code = bench("--url", live_server.url, "--dataset", "nq", "--num-requests", "3",
                 "--request-rate", "4,8", "--burstiness", "0.5", "--rag", '{"strategy": "none"}',
                 "--plot", str(tmp_path))  # fmt: skip
    assert code == 0
    assert (tmp_path / "latency_cdf.png").stat().st_size > 1000
    assert (tmp_path / "throughput_vs_rate.png").stat().st_size > 1000


def test_bench_serve_bad_endpoints_are_one_line(live_server: LiveServer, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    import json

    out = tmp_path / "r.json"
    code = bench(
        "--url", f"http://127.0.0.1:{free_port()}", "--concurrency", "1", "--json", str(out)
    )
    assert code == 2 and "cannot reach" in capsys.readouterr().err
    assert "cannot reach" in json.loads(out.read_text())["error"]
    code = bench("--url", f"{live_server.url}/health", "--concurrency", "1")
    assert code == 2 and "not an OpenAI model list" in capsys.readouterr().err


class _OneRequestPerConnection:
    """A loopback OpenAI-like stream server that, like llama.cpp's server at its keep-alive
    limit, drops a connection after answering on it, without saying so in the response."""

    def __init__(self) -> None:
        import socket
        import threading

        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.served = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        import threading

        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn) -> None:  # type: ignore[no-untyped-def]
        import json

        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                if not (more := conn.recv(65536)):
                    return  # the client left without asking
                data += more
            head, body = data.split(b"\r\n\r\n", 1)
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            while len(body) < length and (more := conn.recv(65536)):
                body += more
            chunk = {"choices": [{"index": 0, "text": "hello"}],
                     "usage": {"completion_tokens": 1, "prompt_tokens": 2}}  # fmt: skip
            payload = f"data: {json.dumps(chunk)}\n\ndata: [DONE]\n\n".encode()
            # Counted before sending: counted after, the client could have its answer (and the
            # test its assertion) while this thread had not yet counted it.
            self.served += 1
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(payload), payload))  # fmt: skip
            time.sleep(0.2)  # the client has sent its next request on this connection by now


def test_bench_serve_resends_a_request_the_server_dropped_unread() -> None:
    from ragserve.client import load

    server = _OneRequestPerConnection()
    try:
        outcomes, _ = asyncio.run(load.run(
            f"http://127.0.0.1:{server.port}", ["a", "b", "c", "d", "e", "f"], model="m",
            max_tokens=1, rag=None, concurrency=1, progress=False, endpoint="completions",
        ))  # fmt: skip
    finally:
        server.sock.close()
    assert [o.error for o in outcomes] == [""] * 6
    assert all(o.ok and o.text == "hello" for o in outcomes) and server.served == 6
