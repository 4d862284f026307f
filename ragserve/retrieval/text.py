"""Word tokenization for lexical retrieval: lowercase words, English stopwords, Snowball stems.

BM25 and its reference tests share this, so "same tokens" is true by construction.
"""

from __future__ import annotations

import re
from functools import lru_cache

_WORD = re.compile(r"(?u)\b\w\w+\b")


@lru_cache(maxsize=4)
def _stemmer(language: str):  # type: ignore[no-untyped-def]
    import Stemmer

    return Stemmer.Stemmer(language)


@lru_cache(maxsize=1)
def _stopwords() -> frozenset[str]:
    from bm25s.stopwords import STOPWORDS_EN

    return frozenset(STOPWORDS_EN)


class WordTokenizer:
    """``stemmer=None`` and ``stopwords=False`` give plain lowercase words."""

    def __init__(self, stemmer: str | None = "english", stopwords: bool = True):
        self.stemmer = stemmer
        self.stopwords = stopwords

    def __call__(self, text: str) -> list[str]:
        words = _WORD.findall(text.lower())
        if self.stopwords:
            stop = _stopwords()
            words = [w for w in words if w not in stop]
        if self.stemmer:
            words = _stemmer(self.stemmer).stemWords(words)
        return words

    def params(self) -> dict[str, object]:
        return {"pattern": _WORD.pattern, "stemmer": self.stemmer, "stopwords": self.stopwords}
