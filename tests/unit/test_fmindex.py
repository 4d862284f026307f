"""The token-level FM-index, built with the bundled model's real tokenizer."""

from pathlib import Path
from typing import Any

import pytest

from ragserve.errors import IndexMismatchError
from ragserve.retrieval.fmindex import FMIndexRetriever
from tests.conftest import CORPUS


def occurrences(haystack: list[int], needle: list[int]) -> int:
    n = len(needle)
    return sum(haystack[i : i + n] == needle for i in range(len(haystack) - n + 1))


def test_counts_and_postings_match_brute_force(fm: FMIndexRetriever, tokenizer) -> None:  # type: ignore[no-untyped-def]
    bodies = [tokenizer.tokenize(r["text"]) for r in CORPUS]
    ngram = tokenizer.tokenize(" the listed identifiers")
    expected = {i: c for i, b in enumerate(bodies) if (c := occurrences(b, ngram))}
    assert expected == {0: 1, 1: 1}
    assert fm.passages(ngram) == expected
    assert fm.count(ngram) == 2
    assert fm.count(tokenizer.tokenize(" identifiers listed the")) == 0


def test_allowed_next_keeps_ngrams_inside_the_corpus(fm: FMIndexRetriever, tokenizer) -> None:  # type: ignore[no-untyped-def]
    prefix = tokenizer.tokenize(" json")
    good = tokenizer.tokenize(" module")[0]
    bad = tokenizer.tokenize(" banana")[0]
    assert fm.allowed_next(prefix, [bad, good]) == [good]


def test_titles_are_matched_separately(fm: FMIndexRetriever, tokenizer) -> None:  # type: ignore[no-untyped-def]
    assert fm.title_count(tokenizer.tokenize(" gzip")) == 1
    assert fm.title_count(tokenizer.tokenize(" module")) == 0  # inside titles, never at the start


def test_search_and_score_agree(fm: FMIndexRetriever) -> None:
    q = "compress and decompress files like gzip"
    hits = fm.search([q], 3)[0]
    assert hits[0].doc_id == 3
    assert fm.score(q, [h.doc_id for h in hits]) == [h.score for h in hits]


class OtherTokenizer:
    def tokenize(self, text: str) -> list[int]:
        return [ord(c) for c in text]

    def identity(self) -> dict[str, Any]:
        return {"tokenizer": "chars", "n_vocab": 1114112, "probe": "x"}


def test_tokenizer_mismatch_names_both(tmp_path: Path, fm: FMIndexRetriever) -> None:
    params = fm.save(tmp_path)
    with pytest.raises(IndexMismatchError) as err:
        FMIndexRetriever.load(tmp_path, params, OtherTokenizer())
    assert "chars" in err.value.message and params["tokenizer"] in err.value.message
