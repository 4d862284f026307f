"""SEAL (Bevilacqua et al., 2022): the model writes the search keys, the FM-index keeps them real.

A beam search over the generator writes n-grams of a passage that would answer the query; every
step extends each live beam only by tokens after which the n-gram still occurs in the corpus
(``FMIndexRetriever.allowed_next``), so every key the model writes is a real corpus substring.
Body keys may start anywhere in a passage; title keys start at a title's open marker and count
only when they end at its close marker (whole titles). Every partial n-gram a beam holds is a
key, with the model's log-probability of it. A body beam whose n-gram occurs only once stops
growing: all it could grow into overlaps it in the same passage and weighs less, so no scoring
would count it, and the model's work goes to the other beams.

A third beam writes the question's key phrase (``query_beam``; the prompt shows a phrase of each
example question). A fine-tuned SEAL model learns to copy the query's distinctive words into its
keys; a small base model asked for passage text rarely does, so this beam asks for them outright:
the model, not a frequency table, decides which of the question's n-grams are worth a key and
how much (its probability of writing them), and the FM-index still keeps each one real.

Passages are scored as in the paper. Each key ``n`` gets a weight from how much likelier the
model finds it for this query than the corpus does, ``w(n, q) = max(0, log[P(n|q)(1 - P(n))] -
log[P(n)(1 - P(n|q))])``, with the corpus prior ``P(n)`` from FM-index counts (add-one
smoothed). ``intersective`` (default) sums, over the non-overlapping keys a passage contains,
``w ** alpha`` times the share of the key's tokens not already covered by better keys (``beta``
weighs that share); ``lm+fm`` takes a passage's best key.

It lives in the engine because it needs both the model and the index. Keys depend only on the
query, so they are cached per query: ``search`` and ``score`` then agree exactly.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections import OrderedDict, defaultdict
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import numpy as np

from ragserve.errors import InputError
from ragserve.generation.base import Generator
from ragserve.retrieval.base import (
    Hit,
    Retriever,
    check_doc_ids,
    check_identity,
    check_queries,
    top_k,
)
from ragserve.retrieval.fmindex import FMIndexRetriever

T = TypeVar("T")
SCORINGS = ("intersective", "lm+fm")
BEAM_RANGE = (1, 64)
KEY_RANGE = (1, 16)

# Written for a base model: it continues a list of questions, each followed by the title and the
# opening of a passage that answers it. Our own examples, on nothing any evaluation set asks.
DEMONSTRATIONS = (
    (
        "How do plants turn sunlight into food?",
        "sunlight into food",
        "Photosynthesis",
        "Photosynthesis is the process by which green plants use light energy to turn water"
        " and carbon dioxide into glucose, releasing oxygen.",
    ),
    (
        "Which river flows through Budapest?",
        "Budapest",
        "Danube",
        "The Danube is the second-longest river in Europe. It flows through Vienna, Bratislava,"
        " Budapest and Belgrade before reaching the Black Sea.",
    ),
    (
        "What does the json module in Python do?",
        "json module",
        "json (Python module)",
        "The json module encodes Python objects as JSON text and decodes JSON text back into"
        " dictionaries, lists, strings and numbers.",
    ),
)
HEADER = (
    "Each question below is followed by its key phrase, then the title and the text of a passage"
    " from the collection that answers it.\n\n"
)
KINDS = ("body", "title", "query")  # what a beam writes: passage text, a title, a key phrase
FIELD = {"body": "Passage:", "title": "Title:", "query": "Key phrase:"}


def seal_prompt(query: str, kind: str) -> str:
    """The text the model continues with passage text, a title or the question's key phrase."""
    shots = "".join(
        f"Question: {q}\nKey phrase: {k}\nTitle: {t}\nPassage: {p}\n\n"
        for q, k, t, p in DEMONSTRATIONS
    )
    question = " ".join(query.split())
    return f"{HEADER}{shots}Question: {question}\n{FIELD[kind]}"


@dataclass(frozen=True)
class SealConfig:
    """Beam search and scoring settings; ``InputError`` naming the field when out of range."""

    beam: int = 15
    title_beam: int = 5
    query_beam: int = 15  # key phrases of the question, as the model picks them
    key_tokens: int = 10
    candidates: int = 64  # model's top tokens per beam and step, before the FM-index filter
    scoring: str = "intersective"
    alpha: float = 2.0
    beta: float = 0.8
    max_locate: int = 2000  # occurrences located for one key; more frequent keys are capped
    group: int = 2  # queries whose beams share model steps (more widens every step's attention)

    def __post_init__(self) -> None:
        for name, (lo, hi) in (
            ("beam", BEAM_RANGE),
            ("title_beam", (0, BEAM_RANGE[1])),
            ("query_beam", (0, BEAM_RANGE[1])),
            ("key_tokens", KEY_RANGE),
            ("candidates", (1, 256)),
            ("max_locate", (1, 10**7)),
            ("group", (1, 64)),
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
                raise InputError(
                    f"seal {name} must be an integer in [{lo}, {hi}], got {value!r}",
                    param=f"seal_{name}",
                )
        if self.scoring not in SCORINGS:
            raise InputError(
                f"unknown seal scoring {self.scoring!r}; choose from {', '.join(SCORINGS)}",
                param="seal_scoring",
            )


@dataclass(frozen=True)
class Key:
    """A generated n-gram: its tokens, whether it is a whole title, log P(n|q), corpus count."""

    tokens: tuple[int, ...]
    title: bool
    logprob: float
    count: int


@dataclass
class Timing:
    """Seconds spent so far, by part: model steps, FM-index probes, passage scoring."""

    queries: int = 0
    steps: int = 0
    model_s: float = 0.0
    index_s: float = 0.0
    scoring_s: float = 0.0
    per_query_s: list[float] = field(default_factory=list)


@dataclass
class _Beams:
    """One query's beam of one kind: passage text, a title, or the question's key phrase."""

    query: int
    kind: str
    width: int
    prompt: list[int]
    live: list[tuple[tuple[int, ...], float]]
    keys: dict[tuple[int, ...], Key]
    copy_from: tuple[tuple[int, ...], ...] = ()  # key phrase: only n-grams of these sequences

    def copyable(self, toks: tuple[int, ...]) -> set[int] | None:
        """Tokens that extend ``toks`` to an n-gram of the question (None: no such limit)."""
        if not self.copy_from:
            return None
        n = len(toks)
        return {
            seq[i + n]
            for seq in self.copy_from
            for i in range(len(seq) - n)
            if seq[i : i + n] == toks
        }


class SealRetriever:
    """The ``Retriever`` seam over SEAL keys. ``search`` may be called from worker threads: the
    model work runs on the event loop given to ``bind`` (the server's), else in a loop of its own.
    """

    name = "seal"

    def __init__(
        self,
        index: FMIndexRetriever,
        generator: Generator,
        config: SealConfig | None = None,
        *,
        cache_size: int = 4096,
    ):
        identity = getattr(generator, "identity", None)
        if identity is not None:  # keys are written in the generator's tokens
            check_identity(
                "FM-index tokenizer",
                index.params,
                identity(),
                ("tokenizer", "n_vocab", "probe"),
                "rebuild the index with the generator's",
            )
        self.index = index
        self.generator = generator
        self.config = config or SealConfig()
        self.timing = Timing()
        self._cache: OrderedDict[tuple[str, SealConfig], list[Key]] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._head: list[int] | None = None

    def __len__(self) -> int:
        return len(self.index)

    def variant(self, **changes: Any) -> SealRetriever:
        """The same index, model and key cache with other settings (per-request overrides)."""
        other = SealRetriever.__new__(SealRetriever)
        other.__dict__.update(self.__dict__)
        other.config = replace(self.config, **changes)
        return other

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Run model work on ``loop`` when called from another thread (backends hold their
        model to one event loop at a time)."""
        self._loop = loop

    # -- the Retriever seam --

    def search(self, queries: Sequence[str], k: int) -> list[list[Hit]]:
        k = check_queries(queries, k, len(self))
        return self._run(self.asearch(list(queries), k))

    def score(self, query: str, doc_ids: Sequence[int]) -> list[float]:
        check_queries([query], 1, len(self))
        ids = check_doc_ids(doc_ids, len(self))
        keys = self._run(self.keys([query]))[0]
        scores = self._scores(keys)
        return [scores.get(i, 0.0) for i in ids]

    async def asearch(self, queries: list[str], k: int) -> list[list[Hit]]:
        k = check_queries(queries, k, len(self))
        out = []
        for keys in await self.keys(queries):
            dense = np.zeros(len(self))
            for doc, s in self._scores(keys).items():
                dense[doc] = s
            out.append(top_k(dense, k))
        return out

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        loop = self._loop
        if loop is not None and loop.is_running() and not loop.is_closed():
            try:
                here = asyncio.get_running_loop()
            except RuntimeError:
                here = None
            if here is loop:
                coro.close()
                raise RuntimeError("on the event loop, await asearch() instead of search()")
            return asyncio.run_coroutine_threadsafe(coro, loop).result()
        return asyncio.run(coro)

    # -- keys: the constrained beam search --

    async def keys(self, queries: Sequence[str]) -> list[list[Key]]:
        """Each query's keys, from the cache or from one beam search over all the new ones."""
        c = self.config
        # what the keys depend on
        beams = (c.beam, c.title_beam, c.query_beam, c.key_tokens, c.candidates)
        found: dict[str, list[Key]] = {}
        with self._lock:
            for q in queries:
                hit = self._cache.get((q, *beams))
                if hit is not None:
                    self._cache.move_to_end((q, *beams))
                    found[q] = hit
        todo = [q for q in dict.fromkeys(queries) if q not in found]
        if todo:
            fresh = []
            for start in range(0, len(todo), self.config.group):
                fresh.extend(await self._beam_search(todo[start : start + self.config.group]))
            with self._lock:
                for q, keys in zip(todo, fresh, strict=True):
                    found[q] = keys
                    self._cache[(q, *beams)] = keys
                while len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
        return [found[q] for q in queries]

    def _prompt(self, query: str, kind: str) -> list[int]:
        text = seal_prompt(query, kind)
        head = text[: text.rindex("Question:")]
        if self._head is None:  # the instructions and examples, shared by every query
            self._head = self.generator.tokenize(head, special=True)  # with BOS
        return self._head + self.generator.tokenize(text[len(head) :], special=False)

    def _question_tokens(self, query: str) -> tuple[tuple[int, ...], ...]:
        """The question's tokens as they read inside a passage (after a space), as written and
        in lower case: the n-grams a key-phrase beam may copy."""
        text = " " + " ".join(query.split())
        seqs = {tuple(self.generator.tokenize(t, special=False)) for t in (text, text.lower())}
        return tuple(sorted(seqs))

    async def _beam_search(self, queries: list[str]) -> list[list[Key]]:
        cfg = self.config
        start = time.perf_counter()
        beams = [
            _Beams(
                qi,
                kind,
                width,
                self._prompt(q, kind),
                [((), 0.0)],
                {},
                self._question_tokens(q) if kind == "query" else (),
            )
            for qi, q in enumerate(queries)
            for kind, width in zip(KINDS, (cfg.beam, cfg.title_beam, cfg.query_beam), strict=True)
            if width
        ]
        reset = getattr(self.generator, "reset_topk_cache", None)
        if reset is not None:  # same queries, same keys (see llama_tree)
            await reset(self._head or [])
        for _ in range(cfg.key_tokens):
            live = [(b, toks, lp) for b in beams for toks, lp in b.live]
            if not live:
                break
            t0 = time.perf_counter()
            tops = await self.generator.next_token_topk(
                [b.prompt + list(toks) for b, toks, _ in live], cfg.candidates
            )
            t1 = time.perf_counter()
            self.timing.model_s += t1 - t0
            self.timing.steps += 1
            # beam -> (n-gram, log-probability, occurrences of the n-gram)
            extended: dict[int, list[tuple[tuple[int, ...], float, int]]] = defaultdict(list)
            for (b, toks, lp), top in zip(live, tops, strict=True):
                title = b.kind == "title"
                copyable = b.copyable(toks)
                if copyable is not None:
                    top = [t for t in top if t.token_id in copyable]
                found = self.index.next_counts(toks, [t.token_id for t in top], title=title)
                for t in top:
                    if t.token_id in found:
                        extended[id(b)].append(
                            ((*toks, t.token_id), lp + t.logprob, found[t.token_id])
                        )
            for b in beams:
                cands = sorted(extended.get(id(b), []), key=lambda c: (-c[1], c[0]))
                b.live = []
                title = b.kind == "title"
                for toks, lp, found_n in cands[: b.width]:
                    # a body key occurs as often as the extension; a title key only when whole
                    count = self.index.count(toks, title=True) if title else found_n
                    if count > 0:  # a title key counts only once it is a whole title
                        b.keys[toks] = Key(toks, title, lp, count)
                    if title or count > 1:
                        b.live.append((toks, lp))
                    # else a body n-gram found once: all it can grow into is keys of that same
                    # passage that overlap it and weigh less, which never score. It stops.
            self.timing.index_s += time.perf_counter() - t1
        best: list[dict[tuple[bool, tuple[int, ...]], Key]] = [{} for _ in queries]
        for b in beams:  # a key written by two beams (text and key phrase) counts at its likeliest
            for key in b.keys.values():
                had = best[b.query].get((key.title, key.tokens))
                if had is None or key.logprob > had.logprob:
                    best[b.query][(key.title, key.tokens)] = key
        out = [list(keys.values()) for keys in best]
        self.timing.queries += len(queries)
        self.timing.per_query_s.append((time.perf_counter() - start) / len(queries))
        return out

    # -- scoring --

    def weight(self, key: Key) -> float:
        """SEAL's w(n, q): how much likelier the model finds the key than the corpus does."""
        p_corpus = (key.count + 1) / (self.index.total_tokens + 1)
        p_query = min(max(math.exp(key.logprob), 1e-12), 1 - 1e-9)
        return max(
            0.0,
            math.log(p_query * (1 - p_corpus)) - math.log(p_corpus * (1 - p_query)),
        )

    def _scores(self, keys: Sequence[Key]) -> dict[int, float]:
        t0 = time.perf_counter()
        cfg = self.config
        per_doc: dict[int, list[tuple[float, Key]]] = defaultdict(list)
        ranked = sorted(
            ((self.weight(k), k) for k in keys), key=lambda wk: (-wk[0], wk[1].title, wk[1].tokens)
        )
        for w, key in ranked:
            if w <= 0:
                continue
            for doc in self._postings(key):
                per_doc[doc].append((w, key))
        scores: dict[int, float] = {}
        for doc, found in per_doc.items():
            if cfg.scoring == "lm+fm":
                scores[doc] = found[0][0]
            else:
                scores[doc] = intersective(found, cfg.alpha, cfg.beta)
        self.timing.scoring_s += time.perf_counter() - t0
        return scores

    def _postings(self, key: Key) -> set[int]:
        limit = self.config.max_locate
        if key.count <= limit:
            return set(self.index.passages(key.tokens, title=key.title))
        return self.index.some_passages(key.tokens, title=key.title, limit=limit)


def _inside(small: tuple[int, ...], big: tuple[int, ...]) -> bool:
    n = len(small)
    return any(big[i : i + n] == small for i in range(len(big) - n + 1))


def intersective(found: Sequence[tuple[float, Key]], alpha: float, beta: float) -> float:
    """SEAL's intersective score of one passage: its keys best first, each that does not overlap
    a better one adding ``w ** alpha`` times ``1 - beta + beta * (share of its tokens new)``."""
    chosen: list[Key] = []
    covered: set[tuple[bool, int]] = set()
    total = 0.0
    for w, key in found:
        if any(
            c.title == key.title
            and (_inside(key.tokens, c.tokens) or _inside(c.tokens, key.tokens))
            for c in chosen
        ):
            continue
        units = {(key.title, t) for t in key.tokens}
        new = len(units - covered) / len(units)
        total += w**alpha * (1 - beta + beta * new)
        chosen.append(key)
        covered |= units
    return total


def with_seal(
    retrievers: dict[str, Retriever], generator: Generator, config: SealConfig | None = None
) -> dict[str, Retriever]:
    """Add ``seal`` over a loaded ``fmindex``, and ``bm25+dense+seal`` when those are loaded."""
    fm = retrievers.get("fmindex")
    if not isinstance(fm, FMIndexRetriever):
        return retrievers
    seal = SealRetriever(fm, generator, config)
    out = {**retrievers, "seal": seal}
    if "bm25" in retrievers and "dense" in retrievers:
        from ragserve.retrieval.hybrid import HybridRetriever

        out["bm25+dense+seal"] = HybridRetriever([retrievers["bm25"], retrievers["dense"], seal])
    return out


__all__ = ["Key", "SealConfig", "SealRetriever", "intersective", "seal_prompt", "with_seal"]
