"""Control flow of the ``auto_rag`` loop with a scripted base model: what each retrieval searches
for (anchored on the question or not) and where the final answer comes from (the passages read, or
the transcript's ``Final Answer:``). The real model runs the loop in
tests/integration/test_auto_rag.py."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Sequence
from types import SimpleNamespace

import pytest

from ragserve.engine.auto_rag import grounded
from ragserve.engine.core import Engine
from ragserve.engine.events import Finished, Retrieved, TokenText
from ragserve.engine.request import RagOptions, RagRequest
from ragserve.generation.base import GenerationChunk, SamplingParams, Usage
from ragserve.generation.chat import plain_transcript
from ragserve.retrieval.base import Hit, check_queries

QUESTION = "Where was the author of Bleak House born?"


class Turns:
    """A base model (no chat template of its own) that answers each prompt by how it ends:
    turns as scripted (the last again once they run out), and ``from passages`` to the answer
    prompt over numbered passages."""

    model_name = "scripted"
    context_length = 4096

    def __init__(self, turns: Sequence[str]):
        self.turns = list(turns)

    async def generate(self, prompt: str, params: SamplingParams) -> AsyncIterator[GenerationChunk]:
        if prompt.rstrip().endswith(("Analysis:", "Intermediate Answer:")):
            text = self.turns.pop(0) if len(self.turns) > 1 else self.turns[0]
        elif "Passages:" in prompt:
            text = "from passages"
        else:
            text = " transcript answer"  # the fallback's document and answer prompts
        yield GenerationChunk(text, [1])
        yield GenerationChunk("", [], "stop", Usage(len(prompt.split()), 1))

    def tokenize(self, text: str, *, special: bool = False) -> list[int]:
        return list(range(len(text.split())))

    def chat_template(self, messages: Sequence[dict[str, str]]) -> str:
        return plain_transcript(messages)


class Recorder:
    """Any query's ranking is the passages in order; every query searched is kept."""

    name = "recorder"

    def __init__(self, n: int = 30):
        self.n = n
        self.queries: list[str] = []
        self.lock = threading.Lock()

    def __len__(self) -> int:
        return self.n

    def search(self, queries: Sequence[str], k: int) -> list[list[Hit]]:
        k = check_queries(queries, k, self.n)
        with self.lock:
            self.queries += queries
        return [[Hit(i, 1.0 / (i + 1)) for i in range(k)] for _ in queries]

    def score(self, query: str, doc_ids: Sequence[int]) -> list[float]:
        return [1.0 / (i + 1) for i in doc_ids]


class Store:
    """Passages 0 and 1 say nothing; from passage 2 on they hold the answer."""

    def get(self, ids: Sequence[int]) -> list[SimpleNamespace]:
        return [
            SimpleNamespace(id=i, external_id=f"p{i}", doc_id=f"d{i}", title=f"T{i}", text=text)
            for i in ids
            for text in ["Dickens was born in Portsmouth." if i >= 2 else "text"]
        ]


def run(turns: Sequence[str], **options: object) -> tuple[str, list[str], Finished, list]:
    retriever = Recorder()
    engine = Engine({"r": retriever}, Store(), Turns(turns), "r")  # type: ignore[arg-type,dict-item]
    rag = RagOptions("auto_rag", retriever="r", **options)  # type: ignore[arg-type]
    request = RagRequest([{"role": "user", "content": QUESTION}], SamplingParams(), rag)

    async def collect() -> list:
        return [e async for e in engine.run(request)]

    events = asyncio.run(collect())
    text = "".join(e.text for e in events if isinstance(e, TokenText))
    return text, retriever.queries, events[-1], events


SCRIPT = [
    " I need the author, then the birthplace.\nInitial Query: Bleak House author",
    " Bleak House is by Charles Dickens.\nRefined Query: Charles Dickens birthplace",
    " Dickens was born in Portsmouth.\nFinal Answer: Portsmouth",
]


def test_base_model_queries_are_anchored_and_answered_over_the_passages_read() -> None:
    text, queries, finished, events = run(SCRIPT)
    assert queries[0] == f"{QUESTION} Bleak House author"
    assert queries[-1] == f"{QUESTION} Charles Dickens birthplace"
    assert text == "from passages"
    assert finished.iterations == 3 and finished.usage.completion_tokens == 4
    read = [c.passage_id for e in events if isinstance(e, Retrieved) for c in e.citations]
    assert read == [0, 1, 2, 3]  # two unread passages per step


def test_the_protocol_as_the_paper_runs_it() -> None:
    text, queries, finished, _ = run(SCRIPT, anchor_queries=False, evidence_answer=False)
    assert queries[0] == "Bleak House author" and queries[-1] == "Charles Dickens birthplace"
    assert text == "Portsmouth" and finished.iterations == 3


@pytest.mark.parametrize("anchor", [True, False])
def test_a_turn_without_a_query(anchor: bool) -> None:
    """Anchored, the next search is the question with what the turn found (as ITER-RETGEN);
    else the protocol's: the previous query again."""
    script = [SCRIPT[0], " It was written in 1852.", SCRIPT[2]]
    _, queries, _, _ = run(script, anchor_queries=anchor)
    expected = f"{QUESTION} It was written in 1852." if anchor else "Bleak House author"
    assert queries[-1] == expected


def test_an_answer_before_any_retrieval_is_the_models_own_unless_grounding_is_on() -> None:
    text, queries, _, _ = run([" I know this.\nFinal Answer: Portsmouth"], grounded_answers=False)
    assert queries == [] and text == "Portsmouth"
    text, queries, _, _ = run([" I know this.\nFinal Answer: Portsmouth"])
    assert len(queries) == 2 and text == "from passages"  # searched until passages held it


@pytest.mark.parametrize("grounding", [True, False])
def test_an_answer_the_passages_do_not_hold_searches_on(grounding: bool) -> None:
    script = [SCRIPT[0], " Found it.\nFinal Answer: Portsmouth", SCRIPT[2]]
    _, queries, finished, events = run(script, grounded_answers=grounding)
    read = [c.passage_id for e in events if isinstance(e, Retrieved) for c in e.citations]
    if grounding:  # passages 0 and 1 do not say Portsmouth: search on, with the answer
        assert queries[-1] == f"{QUESTION} Found it. Portsmouth"
        assert finished.iterations == 3 and read == [0, 1, 2, 3]
    else:
        assert finished.iterations == 2 and read == [0, 1]


def test_grounded_ignores_case_punctuation_and_function_words() -> None:
    text = "Sir Tim Berners-Lee, born in London in 1955."
    assert grounded("Tim Berners-Lee", text) and grounded("the London", text)
    assert grounded("Yes", text) and grounded("", text)
    assert not grounded("Paris", text) and not grounded("London, England", text)
