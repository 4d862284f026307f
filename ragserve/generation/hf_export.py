"""A GGUF as a Hugging Face folder, so vLLM serves the bundled model with no download.

vLLM's GGUF loader needs CUDA kernels; a dequantized folder runs on vLLM's CPU build and on GPUs
alike, with the same vocabulary and weights llama.cpp uses. The export is cached by the GGUF's
SHA-256 and written atomically (temporary folder, then rename), so a crash never leaves half a
model that a later run would load.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from ragserve.errors import InputError, NotFoundError
from ragserve.generation.models import resolve_gguf

MARKER = "ragserve-export.json"
# llama.cpp ends generation at any end-of-generation token, not only EOS; vLLM stops at the
# generation config's eos ids, so the export lists the same ones.
_EOG_KEYS = ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id")
_EOG_TEXTS = ("<end_of_turn>", "<|eot_id|>", "<|im_end|>")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(os.environ.get("RAGSERVE_HF_CACHE", Path(base) / "ragserve" / "hf"))


def export_hf(gguf: str | Path | None = None, *, root: Path | None = None) -> Path:
    """The folder holding ``gguf`` (default: the bundled model) in Hugging Face format."""
    path = resolve_gguf(gguf)
    digest = _sha256(path)
    out = (root or cache_root()) / f"{path.stem}-{digest[:16]}"
    if (out / MARKER).is_file():
        return out
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError:
        raise NotFoundError(
            "exporting a GGUF for vLLM needs transformers, gguf and accelerate:"
            " pip install 'ragserve[vllm]'"
        ) from None
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        try:
            tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
            model = AutoModelForCausalLM.from_pretrained(
                str(path.parent), gguf_file=path.name, dtype=torch.float32
            )
        except Exception as e:  # a damaged file or an architecture transformers cannot convert
            raise InputError(f"cannot export {path} for vLLM: {type(e).__name__}: {e}") from e
        tok.add_bos_token = True  # GGUF models expect BOS; the converted tokenizer drops it
        # The weights are dequantized already; transformers still tags the model as GGUF-quantized
        # and refuses to save it, so the tag goes.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.generation_config.eos_token_id = _eog_ids(path, tok)
        model.save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))
        (tmp / MARKER).write_text(json.dumps({"gguf": str(path), "sha256": digest}) + "\n")
        if out.exists():  # an unfinished export of the same file
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _eog_ids(path: Path, tok) -> list[int]:  # type: ignore[no-untyped-def]
    from gguf import GGUFReader

    fields = GGUFReader(str(path)).fields
    ids = {int(fields[k].contents()) for k in _EOG_KEYS if k in fields}
    vocab = tok.get_vocab()
    ids |= {vocab[t] for t in _EOG_TEXTS if t in vocab}
    return sorted(ids)
