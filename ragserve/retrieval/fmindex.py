"""A token-level FM-index over the corpus, for SEAL-style generative retrieval.

Each passage is stored as a string of the *generator's* token ids, one character per token, as
``TITLE_OPEN title TITLE_CLOSE body``, so a constrained decoder can ask which next tokens keep an
n-gram inside the corpus (``allowed_next``) and which passages contain it (``passages``).

Size: the alphabet is only the token ids the corpus uses (34k of Gemma's 262k on SciFact), ranked
by frequency, so the index's wavelet matrix needs fewer levels and frequent tokens get short
characters; the pickled index is zlib-compressed on disk (its suffix-array samples compress
well). ``benchmarks/results/seal.md`` has the sizes. Indexes written before this layout (one
character per vocabulary id, no ``alphabet.npy``) still load.

As a stand-alone retriever, ``search`` scores passages by the query's maximal n-grams that occur in
the corpus, each weighted by its length and rarity; SEAL's model-conditioned keys live in the
engine (``engine.seal``), which has the model.
"""

from __future__ import annotations

import itertools
import math
import pickle
import zlib
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from tqdm import tqdm

from ragserve.errors import InputError
from ragserve.retrieval.base import Hit, check_doc_ids, check_identity, check_queries, top_k

MAX_NGRAM = 8
MAX_POSTINGS = 2000  # n-grams in more passages than this carry little evidence and cost a lot
LEGACY_OPEN, LEGACY_CLOSE = "\U0010fffb", "\U0010fffc"
OPEN, CLOSE = "\x01", "\x02"  # title markers of the compact alphabet; tokens start at 3


class Tokenizer(Protocol):
    """The generator's tokenizer, as far as the FM-index needs it."""

    def tokenize(self, text: str) -> list[int]: ...

    def identity(self) -> dict[str, Any]: ...


def _code_point(i: int) -> str:
    """The ``i``-th usable character, skipping the surrogates Rust strings cannot hold."""
    cp = i if i < 0xD800 else i + 0x800
    if cp >= 0x10FFFB:
        raise InputError(f"symbol {i} is too large for the FM-index alphabet")
    return chr(cp)


class Alphabet:
    """Token id -> index character. ``None`` for a token the corpus never uses."""

    def __init__(self, tokens: np.ndarray | None):
        self.tokens = tokens  # None: the legacy layout, every vocabulary id its own character
        self._char = (
            {} if tokens is None else {int(t): _code_point(i + 3) for i, t in enumerate(tokens)}
        )
        self.open, self.close = (LEGACY_OPEN, LEGACY_CLOSE) if tokens is None else (OPEN, CLOSE)

    @classmethod
    def by_frequency(cls, docs: Sequence[tuple[list[int], list[int]]]) -> Alphabet:
        freq: Counter[int] = Counter()
        for title, body in docs:
            freq.update(title)
            freq.update(body)
        return cls(np.array([t for t, _ in freq.most_common()], dtype=np.int64))

    def char(self, token: int) -> str | None:
        if self.tokens is None:
            return _code_point(token + 1)
        return self._char.get(token)

    def encode(self, token_ids: Sequence[int]) -> str | None:
        out = []
        for t in token_ids:
            c = self.char(t)
            if c is None:
                return None
            out.append(c)
        return "".join(out)


class FMIndexRetriever:
    """Thread-safe: the index is only read after it is built."""

    name = "fmindex"

    def __init__(self, index, alphabet: Alphabet, tokenizer: Tokenizer, params: dict[str, Any]):  # type: ignore[no-untyped-def]
        self._index = index
        self.alphabet = alphabet
        self._tokenizer = tokenizer
        self.params = params
        self._n = int(params["passages"])
        self.total_tokens = int(params["tokens"])

    def __len__(self) -> int:
        return self._n

    @classmethod
    def fit(
        cls, texts: Sequence[str], tokenizer: Tokenizer, *, show_progress: bool = False
    ) -> FMIndexRetriever:
        from fm_index import MultiFMIndex

        tokenized = []
        for text in tqdm(texts, desc="fm-index tokens", unit="passage", disable=not show_progress):
            title, _, body = text.partition("\n") if "\n" in text else ("", "", text)
            # " " + title: a title as the model writes it after "Title:"
            head = tokenizer.tokenize(" " + title.strip()) if title.strip() else []
            tokenized.append((head, tokenizer.tokenize(body)))
        alphabet = Alphabet.by_frequency(tokenized)
        enc = alphabet.encode
        docs = [f"{OPEN}{enc(title)}{CLOSE}{enc(body)}" for title, body in tokenized]
        index = MultiFMIndex(docs)
        params = {
            **tokenizer.identity(),
            "passages": len(docs),
            "tokens": sum(len(d) - 2 for d in docs),
            "alphabet": len(alphabet.tokens),  # type: ignore[arg-type]
            "max_ngram": MAX_NGRAM,
        }
        return cls(index, alphabet, tokenizer, params)

    def save(self, folder: Path) -> dict[str, Any]:
        folder.mkdir(parents=True, exist_ok=True)
        raw = pickle.dumps(self._index, protocol=pickle.HIGHEST_PROTOCOL)
        (folder / "fmindex.pkl.z").write_bytes(zlib.compress(raw, 6))
        if self.alphabet.tokens is not None:
            np.save(folder / "alphabet.npy", self.alphabet.tokens)
        return dict(self.params)

    @classmethod
    def load(cls, folder: Path, params: dict[str, Any], tokenizer: Tokenizer) -> FMIndexRetriever:
        check_identity(
            "FM-index tokenizer",
            params,
            tokenizer.identity(),
            ("tokenizer", "n_vocab", "probe"),
            "rebuild the index with this model's",
        )
        packed = folder / "fmindex.pkl.z"
        if packed.is_file():
            index = pickle.loads(zlib.decompress(packed.read_bytes()))
        else:  # the layout before the compact alphabet
            with (folder / "fmindex.pkl").open("rb") as f:
                index = pickle.load(f)
        alphabet_file = folder / "alphabet.npy"
        alphabet = Alphabet(np.load(alphabet_file) if alphabet_file.is_file() else None)
        return cls(index, alphabet, tokenizer, params)

    # -- n-gram operations for constrained decoding --

    def _pattern(self, ngram: Sequence[int], title: bool, closed: bool) -> str | None:
        body = self.alphabet.encode(ngram)
        if body is None or (not ngram and not title):
            return None
        if not title:
            return body
        return self.alphabet.open + body + (self.alphabet.close if closed else "")

    def count(self, ngram: Sequence[int], *, title: bool = False) -> int:
        """Occurrences of a token n-gram in the corpus; ``title``: of this whole title."""
        pattern = self._pattern(ngram, title, closed=True)
        return int(self._index.count_all(pattern)) if pattern else 0

    def passages(
        self, ngram: Sequence[int], *, title: bool = False, limit: int | None = None
    ) -> dict[int, int]:
        """Passages containing the n-gram (``title``: titled so), with occurrence counts;
        ``limit``: only the ``limit`` passages where it occurs most, for frequent n-grams."""
        pattern = self._pattern(ngram, title, closed=True)
        if not pattern:
            return {}
        if limit is not None and self._index.count_all(pattern) > limit:
            return dict(self._index.topk(pattern, limit))
        return dict(self._index.count(pattern))

    def some_passages(self, ngram: Sequence[int], *, title: bool = False, limit: int) -> set[int]:
        """Passages of at most ``limit`` located occurrences (in suffix-array order, the same
        every time): the cap on what a very frequent n-gram costs."""
        pattern = self._pattern(ngram, title, closed=True)
        if not pattern:
            return set()
        return {doc for doc, _ in itertools.islice(self._index.iter_locate(pattern), limit)}

    def allowed_next(
        self, prefix: Sequence[int], candidates: Sequence[int], *, title: bool = False
    ) -> list[int]:
        """The candidates ``c`` for which ``prefix + [c]`` occurs in the corpus (``title``: at
        the start of a title)."""
        return list(self.next_counts(prefix, candidates, title=title))

    def next_counts(
        self, prefix: Sequence[int], candidates: Sequence[int], *, title: bool = False
    ) -> dict[int, int]:
        """``allowed_next`` with the occurrences of each ``prefix + [c]``, in candidate order."""
        head = self._pattern(prefix, title, closed=False) if (prefix or title) else ""
        if head is None:
            return {}
        out = {}
        for c in candidates:
            ch = self.alphabet.char(c)
            found = self._index.count_all(head + ch) if ch is not None else 0
            if found > 0:
                out[c] = found
        return out

    def title_count(self, title_prefix: Sequence[int]) -> int:
        """Passages whose title starts with these tokens."""
        pattern = self._pattern(title_prefix, True, closed=False)
        return len(self._index.count(pattern)) if pattern else 0

    # -- retrieval --

    def _ngram_weights(self, query: str) -> list[tuple[dict[int, int], float]]:
        tokens = self._tokenizer.tokenize(query)
        seen: set[str] = set()
        out = []
        for i in range(len(tokens)):
            best, occurrences = "", 0
            for n in range(1, min(MAX_NGRAM, len(tokens) - i) + 1):
                pattern = self.alphabet.encode(tokens[i : i + n])
                # MultiFMIndex.contains is whole-document: count_all is the substring test
                found = self._index.count_all(pattern) if pattern else 0
                if found == 0:
                    break
                best, occurrences = pattern, found
            if not best or best in seen:
                continue
            seen.add(best)
            if occurrences > MAX_POSTINGS * 4:
                continue
            postings = self._index.count(best)
            if len(postings) > MAX_POSTINGS:
                continue
            weight = len(best) * math.log(1 + self._n / len(postings))
            out.append((postings, weight))
        return out

    def _scores(self, query: str) -> dict[int, float]:
        scores: dict[int, float] = defaultdict(float)
        for postings, weight in self._ngram_weights(query):
            for doc in postings:
                scores[doc] += weight
        return scores

    def search(self, queries: Sequence[str], k: int) -> list[list[Hit]]:
        k = check_queries(queries, k, len(self))
        out = []
        for q in queries:
            dense = np.zeros(self._n)
            for doc, s in self._scores(q).items():
                dense[doc] = s
            out.append(top_k(dense, k))
        return out

    def score(self, query: str, doc_ids: Sequence[int]) -> list[float]:
        check_queries([query], 1, len(self))
        scores = self._scores(query)
        return [scores.get(i, 0.0) for i in check_doc_ids(doc_ids, len(self))]
