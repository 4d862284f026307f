"""Typed settings, one place for defaults: environment variables (``RAGSERVE_*``) then flags.

Every default runs on a laptop with no downloads.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any


def _env(name: str, default: str | None) -> str | None:
    return os.environ.get(f"RAGSERVE_{name}", default)


@dataclass(frozen=True)
class Settings:
    index_dir: Path = field(default_factory=lambda: Path(_env("INDEX_DIR", "indexes") or "indexes"))
    index: str = field(default_factory=lambda: _env("INDEX", "python-docs") or "python-docs")
    data_dir: Path = field(
        default_factory=lambda: Path(os.environ.get("RAGSERVE_DATA", "../shared/data"))
    )
    generator: str = field(default_factory=lambda: _env("GENERATOR", "llama_cpp") or "llama_cpp")
    model: str | None = field(default_factory=lambda: _env("MODEL", None))
    upstream: str | None = field(default_factory=lambda: _env("UPSTREAM", None))
    tokenizer: str | None = field(default_factory=lambda: _env("TOKENIZER", None))
    n_ctx: int = field(default_factory=lambda: int(_env("N_CTX", "4096") or 4096))
    n_threads: int | None = field(
        default_factory=lambda: int(v) if (v := _env("N_THREADS", None)) else None
    )
    # Requests the llama.cpp backend decodes together, each with an n_ctx-token KV cache.
    slots: int = field(default_factory=lambda: int(_env("SLOTS", "8") or 8))
    # Outputs that do not depend on what else is batched (speculation needs it); off is faster.
    deterministic: bool = field(
        default_factory=lambda: (_env("DETERMINISTIC", "1") or "1") not in ("0", "false", "no")
    )
    host: str = field(default_factory=lambda: _env("HOST", "127.0.0.1") or "127.0.0.1")
    port: int = field(default_factory=lambda: int(_env("PORT", "8000") or 8000))
    retriever: str | None = field(default_factory=lambda: _env("RETRIEVER", None))
    top_k: int = 4
    max_tokens: int = 256
    max_queued: int = field(default_factory=lambda: int(_env("MAX_QUEUED", "64") or 64))
    # 1 MiB holds a prompt many times the size of any context window this server runs.
    max_body_bytes: int = field(
        default_factory=lambda: int(_env("MAX_BODY_BYTES", str(1 << 20)) or 1 << 20)
    )
    model_alias: str = "ragserve"
    # The most auto_rag turns a request may ask for (rag.max_iterations).
    max_iterations: int = field(default_factory=lambda: int(_env("MAX_ITERATIONS", "10") or 10))

    def with_overrides(self, **overrides: Any) -> Settings:
        """Apply flag values that were given (``None`` means "not given")."""
        known = {f.name for f in fields(self)}
        given = {k: v for k, v in overrides.items() if k in known and v is not None}
        if "index_dir" in given:
            given["index_dir"] = Path(given["index_dir"])
        if "data_dir" in given:
            given["data_dir"] = Path(given["data_dir"])
        return replace(self, **given)
