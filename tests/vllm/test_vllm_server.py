"""``ragserve serve --generator vllm``: the real server over a real vLLM engine, on loopback.

Runs where ``tests/vllm/test_vllm.py`` runs (``.venv-vllm`` or a GPU machine), on the engine
those tests use (``tests/vllm/conftest.py``).
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.conftest import LiveServer
from tests.vllm import needs_vllm

pytestmark = needs_vllm


def test_models_lists_the_bundled_model(server: LiveServer) -> None:
    ids = [m["id"] for m in httpx.get(f"{server.url}/v1/models").json()["data"]]
    assert ids[0] == "ragserve" and ids[-1] == "gemma-3-270m-q4_k_m"  # presets, then the model


def test_chat_answers_from_the_cited_passage(server: LiveServer) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    question = [{"role": "user", "content": "What does the nonlocal statement do?"}]
    resp = client.chat.completions.create(model="ragserve", messages=question, max_tokens=40)
    body = resp.model_dump()
    assert body["citations"][0]["id"] == "py-nonlocal"
    assert "enclosing scope" in resp.choices[0].message.content
    assert resp.usage.completion_tokens > 0

    stream = client.chat.completions.create(
        model="ragserve", messages=question, max_tokens=40, stream=True
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert streamed == resp.choices[0].message.content  # greedy: the same answer either way


def test_prompt_over_the_context_is_a_400(server: LiveServer) -> None:
    long = "word " * 5000
    r = httpx.post(
        f"{server.url}/v1/chat/completions",
        json={"model": "ragserve", "messages": [{"role": "user", "content": long}]},
        timeout=120,
    )
    assert r.status_code == 400
    assert "context window is 2048 tokens" in r.json()["error"]["message"]


def test_unknown_model_folder_is_refused_without_download(tmp_path: Path) -> None:
    from ragserve.errors import NotFoundError
    from ragserve.generation.vllm import VLLMGenerator

    with pytest.raises(NotFoundError, match="never downloads"):
        VLLMGenerator(str(tmp_path / "no-such-model"))
    with pytest.raises(NotFoundError, match="never downloads"):
        VLLMGenerator("no-such-org/no-such-model")


def test_damaged_gguf_is_refused_and_leaves_no_export(tmp_path: Path) -> None:
    from ragserve.errors import InputError
    from ragserve.generation.hf_export import export_hf

    bad = tmp_path / "damaged.gguf"
    bad.write_bytes(b"GGUF" + bytes(range(256)) * 64)  # the magic, then nothing valid
    root = tmp_path / "exports"
    with pytest.raises(InputError, match=r"cannot export .*damaged\.gguf"):
        export_hf(bad, root=root)
    assert list(root.iterdir()) == []  # no half-written folder for a later run to load
