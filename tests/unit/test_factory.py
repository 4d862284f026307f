import importlib.util

import pytest

from ragserve.config import Settings
from ragserve.errors import InputError, NotFoundError
from ragserve.generation.factory import create_generator


def test_unknown_backend_and_missing_options() -> None:
    with pytest.raises(InputError, match="unknown generator 'magic'"):
        create_generator(Settings(generator="magic"))
    with pytest.raises(InputError, match="needs --upstream"):
        create_generator(Settings(generator="openai", upstream=None))


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_vllm_backend_without_vllm_says_how_to_get_it() -> None:
    from ragserve.generation.vllm import VLLMGenerator  # importable without vLLM

    with pytest.raises(NotFoundError, match=r"pip install 'ragserve\[vllm\]'"):
        VLLMGenerator("some/model")
    with pytest.raises(NotFoundError, match="needs vLLM"):
        create_generator(Settings(generator="vllm", model=None))  # the bundled model by default
