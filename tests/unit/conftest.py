"""Fixtures of the unit tests that need the bundled model's real tokenizer."""

import pytest

from ragserve.generation.tokenizer import GGUFTokenizer
from ragserve.retrieval.fmindex import FMIndexRetriever
from tests.conftest import TEXTS


@pytest.fixture(scope="module")
def tokenizer() -> GGUFTokenizer:
    return GGUFTokenizer()


@pytest.fixture(scope="module")
def fm(tokenizer: GGUFTokenizer) -> FMIndexRetriever:
    """The token-level FM-index of the small test corpus."""
    return FMIndexRetriever.fit(TEXTS, tokenizer)
