"""Answers a user can read, with the real model through the real server: questions on which the
bundled base model used to loop until max_tokens now end at their first repeat."""

from __future__ import annotations

import re

import httpx
import pytest

from tests.conftest import LiveServer

pytestmark = pytest.mark.integration

# Questions about the demo corpus whose answers looped before the repeat guard.
LOOPED = [
    "How do I parse JSON from a string?",
    "How do I compress a file with gzip?",
    "How can I read a CSV file?",
]


def sentences(text: str) -> list[str]:
    parts = re.split(r"(?<!\d)[.!?](?=\s)|\n", text)
    keys = [" ".join(re.findall(r"\w+", re.sub(r"^\s*\d+[.)]\s*", "", p).lower())) for p in parts]
    return [k for k in keys if len(k.split()) >= 4]


@pytest.mark.parametrize("question", LOOPED)
def test_answers_do_not_loop_and_are_not_empty(live_server: LiveServer, question: str) -> None:
    r = httpx.post(
        f"{live_server.url}/v1/chat/completions",
        json={"messages": [{"role": "user", "content": question}], "max_tokens": 160},
        timeout=120,
    )
    assert r.status_code == 200
    body = r.json()
    text = body["choices"][0]["message"]["content"]
    assert text.strip()
    said = sentences(text)
    assert len(said) == len(set(said)), text  # no sentence twice
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"]["completion_tokens"] < 160
