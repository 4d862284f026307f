"""The generator's tokenizer without its weights: what the FM-index is built and searched with.

A GGUF loaded ``vocab_only`` takes a fraction of a second and no KV memory.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ragserve.generation.chat import plain_transcript, render_jinja
from ragserve.generation.models import resolve_gguf

PROBE = "ragserve tokenizer probe: The nonlocal statement, 1234 — naïve café."


def tokenizer_identity(name: str, n_vocab: int, tokenize) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """Name, vocabulary size and a fingerprint of how a fixed text tokenizes."""
    probe = hashlib.sha1(repr(tokenize(PROBE)).encode()).hexdigest()[:16]
    return {"tokenizer": name, "n_vocab": n_vocab, "probe": probe}


class GGUFTokenizer:
    def __init__(self, model: str | Path | None = None):
        import llama_cpp
        from llama_cpp._utils import suppress_stdout_stderr

        self.path = resolve_gguf(model)
        # llama.cpp warns on stderr about the context of a vocab-only load; nothing to act on.
        with suppress_stdout_stderr(disable=False):
            self._llm = llama_cpp.Llama(model_path=str(self.path), vocab_only=True, verbose=False)
        self.name = self.path.stem
        self.bos_id = self._llm.token_bos()

    def tokenize(self, text: str) -> list[int]:
        """Plain text tokens: no BOS, special-token text is not parsed."""
        return self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)

    def detokenize(self, token_ids: Sequence[int]) -> str:
        return self._llm.detokenize(list(token_ids)).decode("utf-8", errors="replace")

    def chat_template(self, messages: Sequence[dict[str, str]]) -> str:
        template = self._llm.metadata.get("tokenizer.chat_template")
        return render_jinja(template, messages) if template else plain_transcript(messages)

    def pieces(self) -> dict[str, int]:
        """Token text to id, for upstreams that name top tokens by their text."""
        out: dict[str, int] = {}
        for t in range(self._llm.n_vocab()):
            piece = self._llm.detokenize([t]).decode("utf-8", errors="replace")
            out.setdefault(piece, t)
        return out

    def identity(self) -> dict[str, Any]:
        return tokenizer_identity(self.name, self._llm.n_vocab(), self.tokenize)
