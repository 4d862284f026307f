"""``ragserve eval retrieval``: build (or reuse) an index of the data's corpus, evaluate, report.

The evaluation index keeps documents whole (BEIR's convention) and lives beside the others as
``eval-<dataset>``.
"""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ragserve.corpus import ChunkingConfig
from ragserve.engine.seal import with_seal
from ragserve.errors import InputError
from ragserve.eval.datasets import Dataset, load_dataset
from ragserve.eval.retrieval import evaluate
from ragserve.generation.base import Generator
from ragserve.indexing import (
    LoadedIndex,
    build_from_file,
    list_indexes,
    load_index,
    open_manifest,
)
from ragserve.retrieval.base import Retriever
from ragserve.retrieval.registry import fuse, with_hybrid


@dataclass
class RetrievalReport:
    dataset: Dataset
    results: dict[str, dict[str, Any]]
    settings: dict[str, Any] = field(default_factory=dict)

    def flat(self) -> dict[str, Any]:
        """One flat JSON object: ``<retriever>/<metric>`` keys plus the settings."""
        out: dict[str, Any] = dict(self.settings)
        for name, metrics in self.results.items():
            for key, value in metrics.items():
                out[f"{name}/{key}"] = value
        return out

    def table(self) -> str:
        keys = sorted(
            {k for m in self.results.values() for k in m},
            key=lambda k: (k in ("qps", "build_s"), k),
        )
        rows = [["retriever", *keys]]
        for name, metrics in self.results.items():
            rows.append([name, *(str(metrics.get(k, "")) for k in keys)])
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
        head = (
            f"{self.dataset.name}: {len(self.dataset.queries)} queries,"
            f" {self.settings.get('corpus_passages')} passages"
        )
        return "\n".join([head, *lines])

    def write_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.flat(), indent=2) + "\n")


NEEDS = {"hybrid": ("bm25", "dense"), "seal": ("fmindex",)}


def stored_retrievers(names: list[str]) -> list[str]:
    """The index's retrievers that ``names`` need: ``hybrid`` is BM25 and dense, ``seal`` the
    FM-index, ``a+b`` its parts."""
    out: list[str] = []
    for name in names:
        for part in name.split("+"):
            out.extend(NEEDS.get(part, (part,)))
    return list(dict.fromkeys(out))


def open_eval_index(
    dataset: Dataset,
    index_dir: Path,
    retrievers: list[str],
    rebuild: bool = False,
    dense_factory: str = "Flat",
    progress: bool = True,
) -> LoadedIndex:
    """The index ``eval-<dataset>`` with ``retrievers`` (hybrid: BM25 and dense), built if absent
    or lacking one of them. A rebuild keeps the retrievers the index had, so measuring one never
    builds away another."""
    name = f"eval-{dataset.name}"
    stored = build = stored_retrievers(retrievers)
    if not rebuild and name in list_indexes(index_dir):
        have = open_manifest(index_dir, name)[1].retrievers
        rebuild = any(r not in have for r in stored)
        build = list(dict.fromkeys([*have, *stored]))
    if rebuild or name not in list_indexes(index_dir):
        build_from_file(
            dataset.corpus,
            name,
            index_dir,
            retrievers=build,
            chunking=ChunkingConfig(0, 0),
            progress=progress,
            retriever_options={"dense": {"factory": dense_factory}},
        )
    return load_index(index_dir, name, stored)


def run_retrieval_eval(
    data: str | Path,
    index_dir: Path,
    retrievers: list[str],
    *,
    rebuild: bool = False,
    dense_factory: str = "Flat",
    progress: bool = True,
    generator: Generator | None = None,
    limit: int | None = None,
) -> RetrievalReport:
    """``generator``: the model SEAL writes keys with (needed for ``seal``); ``limit``: the
    first N queries only."""
    dataset = load_dataset(data)
    if limit is not None:
        dataset = replace(dataset, queries=dataset.queries[:limit])
    index = open_eval_index(dataset, index_dir, retrievers, rebuild, dense_factory, progress)
    try:
        loaded = with_hybrid(index.retrievers)
        if generator is not None:
            loaded = with_seal(loaded, generator)
        chosen = {r: fused(loaded, r) for r in retrievers}
        results = evaluate(dataset, chosen, index.docstore.doc_ids())
        build_s = index.manifest.build.get("retriever_seconds", {})
        for r, metrics in results.items():
            if r in build_s:
                metrics["build_s"] = build_s[r]
        settings = {
            "data": dataset.name,
            "queries": len(dataset.queries),
            "corpus_passages": len(index.docstore),
            "dense_factory": index.manifest.retrievers.get("dense", {}).get("factory"),
            "encoder_precision": index.manifest.retrievers.get("dense", {}).get("precision"),
            "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
            "python": platform.python_version(),
        }
        return RetrievalReport(dataset, results, settings)
    finally:
        index.close()


def fused(loaded: dict[str, Retriever], name: str) -> Retriever:
    """A loaded retriever, or ``a+b+c`` fused from loaded ones."""
    r = loaded.get(name) or fuse(loaded, name)
    if r is None:
        hint = " (seal needs a generator)" if "seal" in name.split("+") else ""
        raise InputError(f"retriever {name!r} is not available{hint}")
    return r
