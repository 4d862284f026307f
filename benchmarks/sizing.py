"""Disk and memory per retriever per million passages: the numbers behind the sizing guide in
``deploy/README.md`` (issue 15).

A retriever's cost is a fixed part (libraries, compiled kernels) plus a part per passage, so each
is measured at two corpus sizes and the per-passage part is the slope between them: the NQ corpus
alone, and NQ + HotpotQA + SciFact together (``--data``: the shared evaluation data). Every load is
measured in a fresh process: resident memory before loading and after loading one retriever and
running 50 queries through it. Dense memory and disk do not depend on what the vectors encode, so
its two sizes hold random unit vectors (the corpora are not encoded: that would take most of the
run on a CPU); the query encoder's fixed memory is measured apart. A "replica" process loads the
server's modules, the encoder and every retriever of the larger index: what a ragserve replica
with ``--generator openai`` holds.

    python -m benchmarks.sizing --data ../shared/data --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import write_results
from benchmarks.shards import queries
from ragserve.corpus.documents import Document
from ragserve.corpus.loaders import load_corpus
from ragserve.indexing import build_index

TEXT_RETRIEVERS = ("bm25", "fmindex")
MEASURE = r"""
import json, sys
from pathlib import Path
def rss():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
root, name, what, queries = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
import numpy as np
from ragserve.indexing import load_index
from ragserve.retrieval.encoders import load_encoder
from ragserve.retrieval.dense import VectorSearch
import ragserve.retrieval.bm25, ragserve.retrieval.fmindex
out = {"baseline": rss()}
if what == "encoder":
    load_encoder(None).encode_query("warm up")
elif what == "dense":
    vs = VectorSearch.load(Path(root) / name / "dense", {"factory": "Flat"})
    rng = np.random.default_rng(0)
    for _ in queries:
        q = rng.standard_normal((1, 384)).astype(np.float32)
        vs.search(q / np.linalg.norm(q), 10)
elif what == "replica":
    import ragserve.server.app
    index = load_index(Path(root), name)
    load_encoder(None).encode_query("warm up")
    for r in index.retrievers.values():
        for q in queries:
            r.search([q], 10)
    out["baseline"] = 0
else:
    index = load_index(Path(root), name, [what])
    for q in queries:
        index.retrievers[what].search([q], 10)
out["loaded"] = rss()
print(json.dumps(out))
"""


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def measure(root: Path, name: str, what: str, qs: list[str]) -> int:
    out = subprocess.run([sys.executable, "-c", MEASURE, str(root), name, what, json.dumps(qs)],
                         capture_output=True, text=True, check=True)  # fmt: skip
    res = json.loads(out.stdout.strip().splitlines()[-1])
    return res["loaded"] - res["baseline"]


def documents(data: Path, sets: list[str]) -> list[Document]:
    return [Document(f"{s}:{d.id}", d.title, d.text) for s in sets for d in load_corpus(data / s)]


def random_vectors(folder: Path, n: int) -> None:
    """A ``Flat`` dense folder of ``n`` random unit vectors (what the encoder would store)."""
    from ragserve.retrieval.dense import VectorSearch, make_faiss_index

    v = np.random.default_rng(0).standard_normal((n, 384)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    folder.mkdir(parents=True)
    np.save(folder / "vectors.npy", v)
    import faiss

    faiss.write_index(VectorSearch(make_faiss_index(v, "Flat"), v, "Flat").index,
                      str(folder / "index.faiss"))  # fmt: skip


def run(data: Path) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="sizing-"))
    qs = queries(data / "nq", 50)
    sizes = {}
    for name, sets in (("small", ["nq"]), ("large", ["nq", "hotpotqa", "scifact"])):
        m = build_index(documents(data, sets), {"source": "+".join(sets)}, name, root,
                        retrievers=list(TEXT_RETRIEVERS), progress=False)  # fmt: skip
        n = m.corpus["passages"]
        random_vectors(root / name / "dense", n)
        sizes[name] = {"passages": n, "build_s": m.build["retriever_seconds"]}
        for r in (*TEXT_RETRIEVERS, "dense"):
            sizes[name][r] = {
                "disk": folder_bytes(root / name / r),
                "memory": measure(root, name, r, qs),
            }
        sizes[name]["docstore"] = {"disk": (root / name / "docstore.sqlite").stat().st_size}
    small, large = sizes["small"], sizes["large"]
    dn = large["passages"] - small["passages"]
    per: dict[str, dict[str, float]] = {}
    for r in (*TEXT_RETRIEVERS, "dense", "docstore"):
        per[r] = {
            "disk_gib_per_million": round(
                (large[r]["disk"] - small[r]["disk"]) / dn * 1e6 / 2**30, 2
            )
        }
        if "memory" in large[r]:
            slope = (large[r]["memory"] - small[r]["memory"]) / dn
            per[r]["memory_gib_per_million"] = round(slope * 1e6 / 2**30, 2)
            per[r]["fixed_memory_mib"] = round((small[r]["memory"] - slope * small["passages"])
                                               / 2**20)  # fmt: skip
    # The docstore is read through SQLite and the OS page cache: no resident copy.
    per["docstore"]["memory_gib_per_million"] = 0.0
    return {
        "benchmark": "sizing",
        "data": "nq; nq+hotpotqa+scifact",
        "passages": [small["passages"], large["passages"]],
        "encoder_memory_mib": round(measure(root, "small", "encoder", qs) / 2**20),
        "replica_without_model_mib": round(measure(root, "large", "replica", qs) / 2**20),
        "retrievers": per,
        "raw": sizes,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
    }


def markdown(res: dict[str, Any]) -> str:
    small, large = res["passages"]
    lines = [
        "# Sizing: disk and memory per million passages",
        "",
        f"Each part measured at {small} passages (NQ) and {large} (NQ + HotpotQA + SciFact),"
        " ~100-word passages; the per-passage cost is the slope between the two, scaled to a"
        " million, and the fixed part (libraries, kernels) is given apart. Memory is resident"
        " memory added by loading the part and running 50 queries, each in a fresh process."
        " Dense rows hold random unit vectors (size does not depend on content), `Flat` index."
        f" The query encoder (MiniLM, needed wherever dense runs) is a fixed"
        f" {res['encoder_memory_mib']} MiB. A process with the server's modules, the encoder and"
        f" the larger index's BM25 and FM-index (a replica with `--generator openai`) held"
        f" {res['replica_without_model_mib']} MiB.",
        "",
        "| part | disk GiB / 1M passages | memory GiB / 1M passages | fixed memory MiB |",
        "|---|---|---|---|",
    ]
    for name, r in res["retrievers"].items():
        lines.append(
            f"| {name} | {r['disk_gib_per_million']} | {r['memory_gib_per_million']}"
            f" | {r.get('fixed_memory_mib', '—')} |"
        )
    lines += ["", "Re-run: `python -m benchmarks.sizing --data ../shared/data`", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("../shared/data"))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = ap.parse_args()
    res = run(args.data)
    write_results(args.out, "sizing", res, markdown(res))


if __name__ == "__main__":
    main()
