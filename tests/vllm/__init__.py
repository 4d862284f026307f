"""The vLLM backend against real vLLM engines: run by ``make test`` in ``.venv-vllm`` (vLLM's CPU
build) and by ``scripts/gpu_check.sh`` on CUDA; skipped with that reason where vLLM is absent."""

import importlib.util

import pytest

needs_vllm = [
    pytest.mark.vllm,
    pytest.mark.skipif(
        importlib.util.find_spec("vllm") is None,
        reason="vLLM is not installed here; `make test` runs these tests in .venv-vllm",
    ),
]
