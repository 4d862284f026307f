"""Answers a user can read, with the real model through the real server: questions on which the
bundled base model used to loop until max_tokens now end at their first repeat; an answer that
came back empty is written again."""

from __future__ import annotations

import asyncio
import re
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from ragserve.engine.core import Engine
from ragserve.engine.events import Finished, TokenText
from ragserve.engine.prompt import NO_ANSWER
from ragserve.generation.base import SamplingParams
from ragserve.indexing import load_index
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


def test_an_answer_stopped_before_any_text_is_written_again(
    demo_index_dir: Path, generator
) -> None:  # type: ignore[no-untyped-def]
    """The real model, made to write nothing the first time (a stop string at its own first
    word): the answer opens on its likeliest token that shows text and goes on from there."""
    index = load_index(demo_index_dir, "python-docs", ["bm25"])
    engine = Engine(index.retrievers, index.docstore, generator, "bm25")
    prompt = "Question: What does the json module do in Python?\nAnswer:"
    params = SamplingParams(max_tokens=24)

    async def run(p: SamplingParams) -> str:
        events = [e async for e in engine.answer(prompt, p, "single")]
        assert isinstance(events[-1], Finished)
        return "".join(e.text for e in events if isinstance(e, TokenText))

    try:
        plain = asyncio.run(run(params))
        word = plain.split()[0]
        again = asyncio.run(run(replace(params, stop=(word,))))
    finally:
        index.close()
    assert again and again != NO_ANSWER["single"]
    assert again.split()[0].startswith(word)  # opened on the word the stop string hid
