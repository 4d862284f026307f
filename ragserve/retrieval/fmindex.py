"""A token-level FM-index over the corpus, for SEAL-style generative retrieval.

Each passage is stored as a string of the *generator's* token ids (one character per token), as
``TITLE_OPEN title TITLE_CLOSE body``, so a constrained decoder can ask which next tokens keep an
n-gram inside the corpus (``allowed_next``) and which passages contain it. The index is compressed
(``fm-index``, Rust) and pickled whole.

As a stand-alone retriever, ``search`` scores passages by the query's maximal n-grams that occur in
the corpus, each weighted by its length and rarity; SEAL's model-conditioned weights live in the
engine, which has the model.
"""

from __future__ import annotations

import math
import pickle
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from tqdm import tqdm

from ragserve.errors import InputError
from ragserve.retrieval.base import Hit, check_doc_ids, check_identity, check_queries, top_k

TITLE_OPEN = "\U0010fffb"
TITLE_CLOSE = "\U0010fffc"
MAX_NGRAM = 8
MAX_POSTINGS = 2000  # n-grams in more passages than this carry little evidence and cost a lot


class Tokenizer(Protocol):
    """The generator's tokenizer, as far as the FM-index needs it."""

    def tokenize(self, text: str) -> list[int]: ...

    def identity(self) -> dict[str, Any]: ...


def token_char(token_id: int) -> str:
    """One code point per token id, skipping the surrogate range Rust strings cannot hold."""
    cp = token_id + 1
    if cp >= 0xD800:
        cp += 0x800
    if cp >= 0x10FFFB:
        raise InputError(f"token id {token_id} is too large for the FM-index alphabet")
    return chr(cp)


def encode(token_ids: Sequence[int]) -> str:
    return "".join(token_char(t) for t in token_ids)


class FMIndexRetriever:
    """Thread-safe: the index is only read after it is built."""

    name = "fmindex"

    def __init__(self, index, tokenizer: Tokenizer, params: dict[str, Any]):  # type: ignore[no-untyped-def]
        self._index = index
        self._tokenizer = tokenizer
        self.params = params
        self._n = int(params["passages"])

    def __len__(self) -> int:
        return self._n

    @classmethod
    def fit(
        cls, texts: Sequence[str], tokenizer: Tokenizer, *, show_progress: bool = False
    ) -> FMIndexRetriever:
        from fm_index import MultiFMIndex

        docs = []
        for text in tqdm(texts, desc="fm-index tokens", unit="passage", disable=not show_progress):
            title, _, body = text.partition("\n") if "\n" in text else ("", "", text)
            docs.append(
                TITLE_OPEN + encode(tokenizer.tokenize(title)) + TITLE_CLOSE
                + encode(tokenizer.tokenize(body))
            )  # fmt: skip
        index = MultiFMIndex(docs)
        params = {
            **tokenizer.identity(),
            "passages": len(docs),
            "tokens": sum(len(d) - 2 for d in docs),
            "max_ngram": MAX_NGRAM,
        }
        return cls(index, tokenizer, params)

    def save(self, folder: Path) -> dict[str, Any]:
        folder.mkdir(parents=True, exist_ok=True)
        with (folder / "fmindex.pkl").open("wb") as f:
            pickle.dump(self._index, f, protocol=pickle.HIGHEST_PROTOCOL)
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
        with (folder / "fmindex.pkl").open("rb") as f:
            index = pickle.load(f)
        return cls(index, tokenizer, params)

    # -- n-gram operations for constrained decoding --

    def count(self, ngram: Sequence[int]) -> int:
        """Occurrences of a token n-gram in the whole corpus."""
        return int(self._index.count_all(encode(ngram))) if ngram else 0

    def passages(self, ngram: Sequence[int]) -> dict[int, int]:
        """Passages containing the n-gram, with occurrence counts."""
        return dict(self._index.count(encode(ngram))) if ngram else {}

    def allowed_next(self, prefix: Sequence[int], candidates: Sequence[int]) -> list[int]:
        """The candidates ``c`` for which ``prefix + [c]`` occurs in the corpus."""
        head = encode(prefix)
        return [c for c in candidates if self._index.count_all(head + token_char(c)) > 0]

    def title_count(self, title_prefix: Sequence[int]) -> int:
        """Passages whose title starts with these tokens."""
        return len(self._index.count(TITLE_OPEN + encode(title_prefix)))

    # -- retrieval --

    def _ngram_weights(self, query: str) -> list[tuple[dict[int, int], float]]:
        tokens = self._tokenizer.tokenize(query)
        seen: set[str] = set()
        out = []
        for i in range(len(tokens)):
            best, occurrences = "", 0
            for n in range(1, min(MAX_NGRAM, len(tokens) - i) + 1):
                pattern = encode(tokens[i : i + n])
                found = self._index.count_all(pattern)  # MultiFMIndex.contains is whole-doc
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
