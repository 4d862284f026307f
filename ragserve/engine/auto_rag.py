"""``auto_rag``: the model plans retrieval itself (Auto-RAG, Yu et al. 2024).

Each model turn is free text. A turn that names a query (``Initial Query:``, ``Refined Query:``)
gets the passages for it, not read before, as ``Retrieved Document_<i>`` lines; a turn with
``Final Answer:`` ends the loop; anything else re-issues the previous query. When the iteration
cap is hit, the model writes a document from its own knowledge for the last query, reads it, and
must answer (the paper's parametric fallback).

Base models (no chat template) get a plain-text transcript after worked demonstrations; chat
models get the same turns as chat messages and no demonstrations.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from ragserve.engine.answer_guard import RepeatGuard
from ragserve.engine.events import Citation, Event, Finished, Retrieved, Step, TokenText
from ragserve.engine.prompt import NO_ANSWER
from ragserve.engine.request import RagRequest
from ragserve.generation.base import Generator, Usage
from ragserve.generation.chat import plain_transcript

SYSTEM = (
    "Answer the question by retrieving external knowledge. Extract useful information from each"
    " retrieved document. If the information is insufficient or irrelevant, refine the query and"
    " search again, until the question can be answered."
)

# Worked examples for base models, written for this project in the protocol's format, on topics
# outside the evaluation sets. Turns end where a document or a new question would begin.
DEMONSTRATIONS = """\
Question: In which country was the inventor of the World Wide Web born?
Analysis: I need to find who invented the World Wide Web, then where that person was born.
Initial Query: inventor of the World Wide Web
Retrieved Document_1: World Wide Web The World Wide Web was invented by Tim Berners-Lee in 1989 \
while he worked at CERN near Geneva.
Intermediate Answer: The World Wide Web was invented by Tim Berners-Lee. I still need his \
birthplace.
Refined Query: Tim Berners-Lee place of birth
Retrieved Document_2: Tim Berners-Lee Sir Tim Berners-Lee is an English computer scientist, born \
in London, England, in 1955.
Intermediate Answer: Tim Berners-Lee was born in London, England.
Final Answer: England

Question: At what temperature on the Fahrenheit scale does water boil?
Analysis: I need the boiling point of water in degrees Fahrenheit.
Initial Query: boiling point of water in Fahrenheit
Retrieved Document_1: Fahrenheit The Fahrenheit scale was proposed in 1724 by the physicist \
Daniel Gabriel Fahrenheit.
Intermediate Answer: This document does not give the boiling point of water.
Refined Query: water boils at how many degrees Fahrenheit
Retrieved Document_2: Boiling point At sea level, pure water boils at 212 degrees Fahrenheit \
(100 degrees Celsius).
Intermediate Answer: Water boils at 212 degrees Fahrenheit at sea level.
Final Answer: 212 degrees Fahrenheit"""

# A turn ends where the model would write a document, a new question, or a new example.
TURN_STOP = ("Retrieved Document", "\nQuestion:", "\n\n")
TURN_TOKENS = 96
ANSWER_TOKENS = 48
PASSAGE_WORDS = 120
QUERY_WORDS = 32
DOCUMENT_TOKENS = 220  # a document line of PASSAGE_WORDS words, with room to spare

_QUERY = re.compile(r"Query:[ \t]*([^\n]*)")
_FINAL = re.compile(r"Final Answer:[ \t]*([^\n]*)")


@dataclass(frozen=True)
class Turn:
    """What one model turn asks for: a query, a final answer, or neither (``None`` both)."""

    query: str | None
    answer: str | None


def parse_turn(text: str) -> Turn:
    """The protocol's reading of a turn: the last ``Query:`` wins, else ``Final Answer:``."""
    queries = [q.strip() for q in _QUERY.findall(text)]
    if queries and queries[-1]:
        # A small model sometimes copies a document into its query: a search needs a line.
        return Turn(" ".join(queries[-1].split()[:QUERY_WORDS]), None)
    final = _FINAL.search(text)
    if final is not None and not queries:
        return Turn(None, final.group(1).strip())
    return Turn(None, None)


class Retrieve(Protocol):
    async def __call__(self, query: str, k: int) -> list[Citation]: ...


def _finding(turn: str) -> str:
    """What a turn says it found: its text without the query it asks for."""
    return " ".join(_QUERY.sub("", turn).split())


def _document(i: int, c: Citation) -> str:
    words = c.text.split()
    text = " ".join(words[:PASSAGE_WORDS]) + (" …" if len(words) > PASSAGE_WORDS else "")
    return f"Retrieved Document_{i}: {c.title} {text}".replace("\n", " ")


class Transcript:
    """The conversation so far, rendered for a base model (text) or a chat model (messages)."""

    def __init__(self, generator: Generator, question: str, demonstrations: bool):
        self.generator = generator
        self.chat = not is_base_model(generator)
        self.question = question
        self.demonstrations = demonstrations and not self.chat
        self.turns: list[tuple[str, str]] = []  # (role, text): "model" or "documents"

    def add(self, role: str, text: str) -> None:
        self.turns.append((role, text.strip()))

    def prompt(self, prefix: str = "") -> str:
        """The prompt for the next model turn, which begins with ``prefix``."""
        if self.chat:
            messages = [{"role": "system", "content": SYSTEM}]
            messages.append({"role": "user", "content": f"Question: {self.question}"})
            for role, text in self.turns:
                messages.append(
                    {"role": "assistant" if role == "model" else "user", "content": text}
                )
            return self.generator.chat_template(messages) + prefix
        head = [SYSTEM, DEMONSTRATIONS] if self.demonstrations else [SYSTEM]
        body = "\n".join([f"Question: {self.question}", *(t for _, t in self.turns)])
        return "\n\n".join([*head, body]) + "\n" + prefix


def is_base_model(generator: Generator) -> bool:
    """A model without a chat template gets the plain transcript: it needs demonstrations."""
    probe = [{"role": "user", "content": "x"}]
    return generator.chat_template(probe) == plain_transcript(probe)


@dataclass
class AutoRag:
    """One request's loop: turns, retrievals, the fallback, and the final answer."""

    generator: Generator
    retrieve: Retrieve
    request: RagRequest

    async def run(self) -> AsyncIterator[Event]:
        opts = self.request.rag
        question = self.request.question
        transcript = Transcript(self.generator, question, opts.demonstrations)
        read: set[int] = set()
        usage = Usage(0, 0)
        query, answer = question, None
        last_finding, converged = "", False
        # Room for a turn, its documents, then the fallback document and the answer.
        reserve = 3 * TURN_TOKENS + opts.max_passages * DOCUMENT_TOKENS + ANSWER_TOKENS
        for iteration in range(1, opts.max_iterations + 1):
            # A base model is started on the turn's first words, as the demonstrations begin
            # them; left alone after documents, it goes on writing documents.
            opening = "" if transcript.chat else ("Intermediate Answer:" if read else "Analysis:")
            prompt = transcript.prompt(opening)
            if await self._room(prompt) < reserve:
                break  # the context is nearly full: fall back and answer now
            t0 = time.perf_counter()
            text, used = await self._generate(prompt, TURN_TOKENS, TURN_STOP)
            text = opening + text
            usage = _add(usage, used)
            transcript.add("model", text)
            turn = parse_turn(text)
            yield Step(iteration, "model", text, turn.query, (), time.perf_counter() - t0)
            if turn.answer is not None:
                answer = turn.answer
                break
            finding = _finding(text)
            if finding and finding == last_finding:
                converged = True  # it has nothing new to say: ask for its answer now
                break
            last_finding = finding
            query = turn.query or query
            t0 = time.perf_counter()
            fresh = await self._unread(query, read)
            read.update(c.passage_id for c in fresh)
            transcript.add("documents", "\n".join(_document(c.index, c) for c in fresh))
            yield Retrieved(query, fresh)
            yield Step(
                iteration,
                "retrieval",
                "",
                query,
                tuple(c.external_id for c in fresh),
                time.perf_counter() - t0,
            )
        if answer is None:
            fallback = (
                self._answer(transcript)
                if converged
                else self._fallback(transcript, query, len(read))
            )
            async for event in fallback:
                if isinstance(event, str):
                    answer = event
                elif isinstance(event, Usage):
                    usage = _add(usage, event)
                else:
                    yield event
        async for event in self._final(answer or "", usage):
            yield event

    async def _unread(self, query: str, read: set[int]) -> list[Citation]:
        """Up to ``max_passages`` passages for ``query`` that this request has not read."""
        want = self.request.rag.max_passages
        hits = await self.retrieve(query, want + len(read))
        fresh = [c for c in hits if c.passage_id not in read][:want]
        start = len(read) + 1
        return [replace(c, index=start + i) for i, c in enumerate(fresh)]

    async def _fallback(
        self, transcript: Transcript, query: str, n_read: int
    ) -> AsyncIterator[Event | str | Usage]:
        """The cap is hit: the model writes a document for the last query, reads it, answers."""
        if await self._room(transcript.prompt()) >= 3 * TURN_TOKENS + ANSWER_TOKENS:
            t0 = time.perf_counter()
            doc, used = await self._own_document(transcript, query, n_read + 1)
            yield used
            yield Step(0, "parametric", doc, query, (), time.perf_counter() - t0)
        async for event in self._answer(transcript):
            yield event

    async def _answer(self, transcript: Transcript) -> AsyncIterator[Event | str | Usage]:
        """Ask for the final answer now, from what the transcript holds."""
        t0 = time.perf_counter()
        prefix = "" if transcript.chat else "Final Answer:"
        if transcript.chat:
            transcript.add("documents", "Give the Final Answer.")
        text, used = await self._generate(transcript.prompt(prefix), ANSWER_TOKENS, ("\n",))
        yield used
        found = _FINAL.search(text)
        answer = found.group(1) if found else text
        yield Step(0, "model", prefix + text, None, (), time.perf_counter() - t0)
        yield answer.strip()

    async def _own_document(self, transcript: Transcript, query: str, i: int) -> tuple[str, Usage]:
        """A document the model writes from its own knowledge, added as ``Document_<i>``."""
        if transcript.chat:
            ask = f"Write a short document from your own knowledge that answers: {query}"
            transcript.add("documents", ask)
            doc, used = await self._generate(transcript.prompt(), TURN_TOKENS, ("\n\n",))
            transcript.add("model", doc)
            transcript.add("documents", f"Retrieved Document_{i}: {doc}")
        else:
            prefix = f"Retrieved Document_{i}:"
            doc, used = await self._generate(transcript.prompt(prefix), TURN_TOKENS, ("\n",))
            transcript.add("documents", f"{prefix} {doc}")
        return doc, used

    async def _final(self, answer: str, usage: Usage) -> AsyncIterator[Event]:
        guard = RepeatGuard()
        text = (guard.feed(answer) + guard.flush()).strip()
        yield TokenText(text or NO_ANSWER["auto_rag"])
        yield Finished("stop", usage)

    async def _room(self, prompt: str) -> int:
        """Tokens left in the context window after ``prompt``."""
        ids = await asyncio.to_thread(self.generator.tokenize, prompt, special=True)
        return self.generator.context_length - len(ids)

    async def _generate(
        self, prompt: str, max_tokens: int, stop: Sequence[str]
    ) -> tuple[str, Usage]:
        params = replace(
            self.request.params,
            max_tokens=max_tokens,
            stop=tuple(dict.fromkeys((*stop, *self.request.params.stop))),
            fit_context=True,
        )
        parts, usage = [], Usage(0, 0)
        async for chunk in self.generator.generate(prompt, params):
            parts.append(chunk.text)
            if chunk.usage is not None:
                usage = chunk.usage
        return "".join(parts), usage


def _add(a: Usage, b: Usage) -> Usage:
    return Usage(a.prompt_tokens + b.prompt_tokens, a.completion_tokens + b.completion_tokens)
