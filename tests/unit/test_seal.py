"""SEAL's control flow and scoring: the beam search under the FM-index's constraint, with a
scripted generator (the real model's keys are tested in ``integration/test_seal.py``)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from ragserve.engine.seal import (
    DEMONSTRATIONS,
    Key,
    SealConfig,
    SealRetriever,
    _Beams,
    intersective,
    seal_prompt,
)
from ragserve.errors import InputError
from ragserve.generation.base import TopToken
from ragserve.generation.tokenizer import GGUFTokenizer


class ScriptedModel:
    """Offers the same candidates after every prefix, most likely first: what the FM-index
    lets through is all that decides the keys."""

    def __init__(self, tokenizer: GGUFTokenizer, words: Sequence[str]):
        self._tok = tokenizer
        ids = [t for w in words for t in tokenizer.tokenize(w)]
        self.candidates = list(dict.fromkeys(ids))
        self.calls = 0

    def tokenize(self, text: str, *, special: bool = False) -> list[int]:
        return self._tok.tokenize(text)

    async def next_token_topk(
        self, prefixes: Sequence[Sequence[int]], m: int
    ) -> list[list[TopToken]]:
        self.calls += 1
        row = [TopToken(t, -1.0 - 0.5 * i) for i, t in enumerate(self.candidates[:m])]
        return [row for _ in prefixes]


WORDS = [" json", " module", " gzip", " banana", " statement", " nonlocal", " the", " listed"]


def test_every_key_occurs_in_the_corpus_and_titles_are_whole(fm, tokenizer) -> None:  # type: ignore[no-untyped-def]
    model = ScriptedModel(tokenizer, WORDS)
    seal = SealRetriever(fm, model, SealConfig(beam=4, title_beam=3, key_tokens=4))  # type: ignore[arg-type]
    keys = asyncio.run(seal.keys(["which module reads json?"]))[0]
    assert keys and all(fm.count(k.tokens, title=k.title) == k.count > 0 for k in keys)
    banana = tokenizer.tokenize(" banana")[0]
    assert all(banana not in k.tokens for k in keys)  # never in the corpus, never in a key
    titles = {tokenizer.detokenize(k.tokens).strip() for k in keys if k.title}
    assert titles and titles <= {"json module", "gzip module", "nonlocal statement"}
    assert max(len(k.tokens) for k in keys) <= 4


def test_search_and_score_agree_and_keys_are_cached(fm, tokenizer) -> None:  # type: ignore[no-untyped-def]
    model = ScriptedModel(tokenizer, WORDS)
    seal = SealRetriever(fm, model, SealConfig(beam=4, title_beam=2, key_tokens=3))  # type: ignore[arg-type]
    q = "which module reads json?"
    hits = seal.search([q], 3)[0]
    calls = model.calls
    assert hits and hits[0].score > 0
    assert seal.score(q, [h.doc_id for h in hits]) == [h.score for h in hits]
    assert model.calls == calls  # the query's keys came from the cache
    best_key = seal.variant(scoring="lm+fm").search([q], 3)[0]
    assert best_key and model.calls == calls  # other scoring, same keys


def test_several_queries_search_together(fm, tokenizer) -> None:  # type: ignore[no-untyped-def]
    model = ScriptedModel(tokenizer, WORDS)
    seal = SealRetriever(fm, model, SealConfig(beam=3, title_beam=0, key_tokens=3, group=4))  # type: ignore[arg-type]
    out = seal.search(["a", "b", "c"], 2)
    assert len(out) == 3 and model.calls <= 3  # one model call per step for all three


def test_key_phrase_beams_add_prefixes_and_shared_keys_count_once(fm, tokenizer) -> None:  # type: ignore[no-untyped-def]
    model = ScriptedModel(tokenizer, WORDS)
    sizes = []
    for query_beam in (0, 3):
        seen: list[int] = []
        inner = model.next_token_topk

        async def counting(prefixes, m, inner=inner, seen=seen):  # type: ignore[no-untyped-def]
            seen.append(len(prefixes))
            return await inner(prefixes, m)

        model.next_token_topk = counting  # type: ignore[method-assign]
        cfg = SealConfig(beam=3, title_beam=0, query_beam=query_beam, key_tokens=3)
        keys = asyncio.run(SealRetriever(fm, model, cfg).keys(["which module reads json?"]))[0]  # type: ignore[arg-type]
        model.next_token_topk = inner  # type: ignore[method-assign]
        sizes.append(seen[0])
        # the scripted model writes the same keys in both beams: each is kept once
        assert len({(k.title, k.tokens) for k in keys}) == len(keys)
    assert sizes == [1, 2]  # the key-phrase beam is a second prompt from the first step


def test_key_phrase_beams_copy_only_the_questions_ngrams(fm, tokenizer) -> None:  # type: ignore[no-untyped-def]
    seal = SealRetriever(fm, ScriptedModel(tokenizer, WORDS))  # type: ignore[arg-type]
    beam = _Beams(0, "query", 3, [], [((), 0.0)], {}, seal._question_tokens("Which module  JSON?"))
    first = beam.copyable(())
    assert first is not None and tokenizer.tokenize(" module")[0] in first
    which_module = tuple(tokenizer.tokenize(" which module"))  # the lower-case copy
    assert beam.copyable(which_module) == {tokenizer.tokenize(" json")[0]}
    assert beam.copyable(tuple(tokenizer.tokenize(" banana"))) == set()
    body = _Beams(0, "body", 3, [], [((), 0.0)], {})
    assert body.copyable(()) is None  # passage text is limited by the corpus alone


def test_prompts_end_where_each_beam_writes_and_examples_quote_their_question() -> None:
    assert seal_prompt("why?", "query").endswith("Question: why?\nKey phrase:")
    assert seal_prompt("why?", "title").endswith("Title:")
    assert seal_prompt("  why\n now ", "body").endswith("Question: why now\nPassage:")
    assert all(phrase in question for question, phrase, _, _ in DEMONSTRATIONS)


def test_intersective_counts_overlapping_keys_once() -> None:
    a = Key((1, 2, 3), False, -1.0, 5)
    inside = Key((2, 3), False, -1.0, 9)
    half_new = Key((3, 4), False, -1.0, 2)
    got = intersective([(3.0, a), (2.0, inside), (1.0, half_new)], alpha=2.0, beta=0.8)
    assert got == pytest.approx(3.0**2 + 1.0 * (0.2 + 0.8 * 0.5))


def test_weight_is_zero_unless_the_model_prefers_the_key(fm, tokenizer) -> None:  # type: ignore[no-untyped-def]
    seal = SealRetriever(fm, ScriptedModel(tokenizer, WORDS))  # type: ignore[arg-type]
    common = Key((1,), False, logprob=-12.0, count=fm.total_tokens // 2)
    rare_likely = Key((1, 2), False, logprob=-0.5, count=1)
    assert seal.weight(common) == 0.0
    assert seal.weight(rare_likely) > seal.weight(Key((1, 2), False, -3.0, 1)) > 0


@pytest.mark.parametrize(
    ("field", "value"),
    [("beam", 0), ("beam", 65), ("query_beam", -1), ("key_tokens", 17), ("group", 0)],
)
def test_out_of_range_settings_name_the_field(field: str, value: int) -> None:
    with pytest.raises(InputError) as err:
        SealConfig(**{field: value})
    assert err.value.param == f"seal_{field}"


def test_unknown_scoring_is_refused() -> None:
    with pytest.raises(InputError, match="lm\\+fm"):
        SealConfig(scoring="bm25")
