"""``auto_rag``: the model plans retrieval itself (Auto-RAG, Yu et al. 2024).

Each model turn is free text. A turn that names a query (``Initial Query:``, ``Refined Query:``)
gets the passages for it, not read before, as ``Retrieved Document_<i>`` lines; a turn with
``Final Answer:`` ends the loop; anything else re-issues the previous query. When the iteration
cap is hit, the model writes a document from its own knowledge for the last query, reads it, and
must answer (the paper's parametric fallback).

A small base model answers from the first passage it likes: with ``grounded_answers`` (default for
base models) a ``Final Answer:`` whose words the passages read do not hold is not taken; the loop
searches on with what the turn said, the answer included, as a reader checks the sources first.

Base models (no chat template) get a plain-text transcript after worked demonstrations; chat
models get the same turns as chat messages and no demonstrations.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from ragserve.engine.answer_guard import RepeatGuard
from ragserve.engine.events import Citation, Event, Finished, Retrieved, Step, TokenText
from ragserve.engine.prompt import NO_ANSWER
from ragserve.engine.request import RagRequest
from ragserve.engine.speculative import (
    Search,
    SpecStats,
    Speculator,
    Stride,
    summary,
    verified_states,
)
from ragserve.generation.base import Generator, Usage
from ragserve.generation.chat import plain_transcript
from ragserve.retrieval.base import Hit, Retriever

if TYPE_CHECKING:
    from ragserve.corpus import DocStore

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
PREFETCH = 20  # passages a search brings into the speculation cache (at least)

# Writes the answer over the passages read: answer text, then ``Finished``.
AnswerOver = Callable[[list[Citation]], AsyncIterator[TokenText | Finished]]

_QUERY = re.compile(r"Query:[ \t]*([^\n]*)")
_FINAL = re.compile(r"Final Answer:[ \t]*([^\n]*)")
_LABEL = re.compile(r"(?:Analysis|Intermediate Answer|Final Answer):")


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

    def prompt(self, turns: Sequence[tuple[str, str]], prefix: str = "") -> str:
        """The prompt for the next model turn after ``turns`` ((role, text): "model" or
        "documents"), which begins with ``prefix``."""
        if self.chat:
            messages = [{"role": "system", "content": SYSTEM}]
            messages.append({"role": "user", "content": f"Question: {self.question}"})
            for role, text in turns:
                messages.append(
                    {"role": "assistant" if role == "model" else "user", "content": text}
                )
            return self.generator.chat_template(messages) + prefix
        head = [SYSTEM, DEMONSTRATIONS] if self.demonstrations else [SYSTEM]
        body = "\n".join([f"Question: {self.question}", *(t for _, t in turns)])
        return "\n\n".join([*head, body]) + "\n" + prefix


def is_base_model(generator: Generator) -> bool:
    """A model without a chat template gets the plain transcript: it needs demonstrations."""
    probe = [{"role": "user", "content": "x"}]
    return generator.chat_template(probe) == plain_transcript(probe)


@dataclass(frozen=True)
class AutoRagState:
    """Where one request's loop stands. Immutable, so a rollback (``engine.speculative``) is
    keeping an older one; ``events`` are what the loop has to say so far."""

    turns: tuple[tuple[str, str], ...] = ()
    read: tuple[int, ...] = ()  # passages read, in order
    usage: Usage = field(default_factory=lambda: Usage(0, 0))
    iteration: int = 0  # model turns taken
    query: str = ""  # the last query asked (the question before any)
    last_finding: str = ""
    wants: str | None = None  # the query to retrieve for next; None once the loop is over
    asked: float = 0.0  # when ``wants`` was asked, for the retrieval step's time
    answer: str | None = None
    converged: bool = False
    events: tuple[Event, ...] = ()


class AutoRag:
    """One request's loop: turns, retrievals, the fallback, and the final answer.

    Turn → query → passages → turn is a chain of retrieval steps for ``engine.speculative``:
    with ``rag.speculative`` a refined query is answered from the request's cache and the next
    turn generates on that guess while the real search runs; a wrong guess is rolled back.
    """

    def __init__(
        self,
        generator: Generator,
        retriever: Retriever,
        docstore: DocStore,
        search: Search,
        request: RagRequest,
        answer_over: AnswerOver | None = None,
        **speculation: Any,
    ):
        """``answer_over``: writes the answer over passages, as ``single`` does; used in place
        of the transcript's own answer where ``rag.evidence_answer`` asks (by default, for base
        models). ``speculation``: ``Speculator`` options (``prefetch``, ``fixed_stride``,
        ``asynchronous``), which the benchmark varies."""
        opts = request.rag
        self.generator = generator
        self.docstore = docstore
        self.request = request
        self.transcript = Transcript(generator, request.question, opts.demonstrations)
        base = not self.transcript.chat
        self.anchored = base if opts.anchor_queries is None else opts.anchor_queries
        evidence = base if opts.evidence_answer is None else opts.evidence_answer
        self.grounded = base if opts.grounded_answers is None else opts.grounded_answers
        self.answer_over = answer_over if evidence else None
        # Room for a turn, its documents, then the fallback document and the answer.
        self.reserve = 3 * TURN_TOKENS + opts.max_passages * DOCUMENT_TOKENS + ANSWER_TOKENS
        # Deep enough that the unread passages a step reads are among the hits in every mode.
        depth = max(PREFETCH, opts.max_passages * (opts.max_iterations + 1))
        self.speculator: Speculator[AutoRagState] = Speculator(
            retriever,
            search,
            lambda state: state.wants,
            self.advance,
            k=depth,
            search_k=depth,
            pick=self.unread,
            # A turn takes far longer than a search: verify each guess as its turn starts.
            stride=Stride(initial=1),
            **speculation,
        )

    @property
    def stats(self) -> SpecStats:
        return self.speculator.stats

    async def run(self) -> AsyncIterator[Event]:
        opts = self.request.rag
        first = await self.turn(AutoRagState(query=self.request.question))
        for event in first.events:
            yield event
        state, told = first, len(first.events)
        chain = self.speculator.run if opts.speculative else self.speculator.plain
        async with contextlib.aclosing(verified_states(chain, first)) as states:
            async for state in states:
                for event in state.events[told:]:
                    yield event
                told = len(state.events)
        read = [c for e in state.events if isinstance(e, Retrieved) for c in e.citations]
        if self.answer_over is not None and read:
            async for event in self.answer_over(read):
                if isinstance(event, Finished):
                    event = replace(
                        event,
                        usage=_add(state.usage, event.usage),
                        iterations=state.iteration,
                        speculation=summary(self.stats, opts.speculative),
                    )
                yield event
            return
        turns, answer, usage = list(state.turns), state.answer, state.usage
        if answer is None:
            fallback = (
                self._answer(turns)
                if state.converged
                else self._fallback(turns, state.query, len(state.read))
            )
            async for event in fallback:
                if isinstance(event, str):
                    answer = event
                elif isinstance(event, Usage):
                    usage = _add(usage, event)
                else:
                    yield event
        async for event in self._final(answer or "", usage, state.iteration):
            yield event

    def unread(self, state: AutoRagState, hits: list[Hit]) -> list[Hit]:
        """The passages a retrieval step reads: the first ``max_passages`` not read before."""
        read = set(state.read)
        return [h for h in hits if h.doc_id not in read][: self.request.rag.max_passages]

    async def advance(self, state: AutoRagState, hits: list[Hit]) -> AutoRagState:
        """A retrieval step: read ``hits``, then take the next model turn."""
        assert state.wants is not None
        passages = await asyncio.to_thread(self.docstore.get, [h.doc_id for h in hits])
        start = len(state.read) + 1
        fresh = [
            Citation(start + i, p.id, p.external_id, p.doc_id, p.title, p.text, h.score)
            for i, (h, p) in enumerate(zip(hits, passages, strict=True))
        ]
        docs = "\n".join(_document(c.index, c) for c in fresh)
        ids = tuple(c.external_id for c in fresh)
        took = time.perf_counter() - state.asked
        state = replace(
            state,
            turns=(*state.turns, ("documents", docs)),
            read=(*state.read, *(c.passage_id for c in fresh)),
            wants=None,
            events=(
                *state.events,
                Retrieved(state.wants, fresh),
                Step(state.iteration, "retrieval", "", state.wants, ids, took),
            ),
        )
        return await self.turn(state)

    async def turn(self, state: AutoRagState) -> AutoRagState:
        """The next model turn: it asks for a query (``wants``), answers, or ends the loop."""
        if state.iteration >= self.request.rag.max_iterations:
            return state  # the cap: the fallback answers
        # A base model is started on the turn's first words, as the demonstrations begin them;
        # left alone after documents, it goes on writing documents.
        chat = self.transcript.chat
        opening = "" if chat else ("Intermediate Answer:" if state.read else "Analysis:")
        prompt = self.transcript.prompt(state.turns, opening)
        if await self._room(prompt) < self.reserve:
            return state  # the context is nearly full: fall back and answer now
        t0 = time.perf_counter()
        text, used = await self._generate(prompt, TURN_TOKENS, TURN_STOP)
        text = opening + text
        turn = parse_turn(text)
        iteration = state.iteration + 1
        step = Step(iteration, "model", text, turn.query, (), time.perf_counter() - t0)
        state = replace(
            state,
            iteration=iteration,
            turns=(*state.turns, ("model", text.strip())),
            usage=_add(state.usage, used),
            events=(*state.events, step),
        )
        # An answer the passages read do not hold is not taken (``grounded_answers``): a small
        # model answers from the first passage it likes. It searches on with what the turn said.
        if turn.answer is not None and (
            not self.grounded or grounded(turn.answer, _read_text(state))
        ):
            return replace(state, answer=turn.answer)
        finding = _finding(text)
        if finding and finding == state.last_finding:
            return replace(state, converged=True)  # nothing new to say: ask for its answer
        query = turn.query or state.query
        wants = self.search_text(turn.query or finding) if self.anchored else query
        return replace(
            state, last_finding=finding, query=query, wants=wants, asked=time.perf_counter()
        )

    def search_text(self, said: str) -> str:
        """An anchored search: the question, then the turn's query or, without one, what the
        turn found (as ITER-RETGEN searches the question with the last generation). A small
        model's own queries drop the question's key terms; the question keeps them."""
        question = self.request.question
        said = " ".join(_LABEL.sub(" ", said).split()[:QUERY_WORDS])
        return question if not said or said == question else f"{question} {said}"

    async def _fallback(
        self, turns: list[tuple[str, str]], query: str, n_read: int
    ) -> AsyncIterator[Event | str | Usage]:
        """The cap is hit: the model writes a document for the last query, reads it, answers."""
        if await self._room(self.transcript.prompt(turns)) >= 3 * TURN_TOKENS + ANSWER_TOKENS:
            t0 = time.perf_counter()
            doc, used = await self._own_document(turns, query, n_read + 1)
            yield used
            yield Step(0, "parametric", doc, query, (), time.perf_counter() - t0)
        async for event in self._answer(turns):
            yield event

    async def _answer(self, turns: list[tuple[str, str]]) -> AsyncIterator[Event | str | Usage]:
        """Ask for the final answer now, from what the transcript holds."""
        t0 = time.perf_counter()
        chat = self.transcript.chat
        prefix = "" if chat else "Final Answer:"
        if chat:
            turns.append(("documents", "Give the Final Answer."))
        prompt = self.transcript.prompt(turns, prefix)
        text, used = await self._generate(prompt, ANSWER_TOKENS, ("\n",))
        yield used
        found = _FINAL.search(text)
        answer = found.group(1) if found else text
        yield Step(0, "model", prefix + text, None, (), time.perf_counter() - t0)
        yield answer.strip()

    async def _own_document(
        self, turns: list[tuple[str, str]], query: str, i: int
    ) -> tuple[str, Usage]:
        """A document the model writes from its own knowledge, added as ``Document_<i>``."""
        if self.transcript.chat:
            ask = f"Write a short document from your own knowledge that answers: {query}"
            turns.append(("documents", ask))
            doc, used = await self._generate(self.transcript.prompt(turns), TURN_TOKENS, ("\n\n",))
            turns.extend(
                [("model", doc.strip()), ("documents", f"Retrieved Document_{i}: {doc}".strip())]
            )
        else:
            prefix = f"Retrieved Document_{i}:"
            prompt = self.transcript.prompt(turns, prefix)
            doc, used = await self._generate(prompt, TURN_TOKENS, ("\n",))
            turns.append(("documents", f"{prefix} {doc}".strip()))
        return doc, used

    async def _final(self, answer: str, usage: Usage, iterations: int) -> AsyncIterator[Event]:
        guard = RepeatGuard()
        text = (guard.feed(answer) + guard.flush()).strip()
        yield TokenText(text or NO_ANSWER["auto_rag"])
        spec = summary(self.stats, self.request.rag.speculative)
        yield Finished("stop", usage, iterations=iterations, speculation=spec)

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


# Words an answer may hold that no passage needs to: yes/no answers and function words.
_FREE_WORDS = frozenset(
    {"a", "an", "the", "of", "in", "on", "at", "to", "and", "or", "is", "was", "yes", "no"}
)


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def grounded(answer: str, passages: str) -> bool:
    """Whether every word of ``answer`` but function words (and yes/no) occurs in ``passages``:
    the check a reader makes before trusting an answer to the documents it cites."""
    wanted = set(_words(answer)) - _FREE_WORDS
    return wanted <= set(_words(passages))


def _read_text(state: AutoRagState) -> str:
    return " ".join(
        f"{c.title} {c.text}" for e in state.events if isinstance(e, Retrieved) for c in e.citations
    )


def _add(a: Usage, b: Usage) -> Usage:
    return Usage(a.prompt_tokens + b.prompt_tokens, a.completion_tokens + b.completion_tokens)
