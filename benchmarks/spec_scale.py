"""RaLMSpec speed-up against corpus size (issue 11), per retriever, in one run.

    python -m benchmarks.spec_scale --out benchmarks/results

Retrieval grows with the corpus and generation does not, so the speed-up speculation can give
grows too, up to the Amdahl bound 1/(1 − retrieval share). Each size adds synthetic distractor
passages to the HotpotQA corpus as ``ragserve bench spec --distractors`` does (the same passages
at every size: a larger set holds the smaller); each point is the same prompts through the
baseline and the variants, every output checked against the baseline's.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

SIZES = {  # synthetic passages per retriever; HNSW and BM25 stop where building them takes long
    "dense": (0, 500_000, 2_000_000, 5_000_000),
    "hnsw": (0, 50_000, 200_000),
    "bm25": (0, 250_000, 1_000_000),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", help="QA folder (default: $RAGSERVE_DATA/hotpotqa)")
    ap.add_argument("--retrievers", default="dense,hnsw,bm25")
    ap.add_argument("--num-prompts", type=int, default=8)
    ap.add_argument("--variants", default="P,PSA")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args()

    import asyncio

    from ragserve.config import Settings
    from ragserve.eval.datasets import load_dataset
    from ragserve.eval.report import open_eval_index
    from ragserve.eval.spec import bench, bench_retriever
    from ragserve.generation.factory import create_generator

    settings = Settings.load()
    dataset = load_dataset(Path(args.data) if args.data else settings.data_dir / "hotpotqa")
    index = open_eval_index(dataset, settings.index_dir, ["bm25", "dense"])
    generator = create_generator(settings)
    questions = [q for _, q in dataset.queries[: args.num_prompts]]
    variants = args.variants.split(",")
    points: list[dict[str, Any]] = []
    try:
        for kind in args.retrievers.split(","):
            for n in SIZES[kind]:
                t = time.perf_counter()
                retriever, docs = bench_retriever(index, kind, n)
                build_s = time.perf_counter() - t
                rows = bench(generator, retriever, docs, questions, variants, args.max_tokens)
                best = max(variants, key=lambda v: rows[v]["speedup"])
                point = {
                    "retriever": kind, "passages": len(retriever), "distractors": n,
                    "build_s": round(build_s, 1), "best": best, **rows[best],
                    "retrieval_share": rows["base"]["retrieval_share"],
                    "amdahl_bound": rows["base"]["amdahl_bound"],
                    "base_latency_s": rows["base"]["mean_latency_s"], "rows": rows,
                }  # fmt: skip
                points.append(point)
                print({k: v for k, v in point.items() if k != "rows"}, flush=True)
                del retriever, docs
                gc.collect()
    finally:
        asyncio.run(generator.aclose())
        index.close()
    res = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "data": dataset.name, "prompts": len(questions), "max_tokens": args.max_tokens,
        "variants": variants, "points": points,
    }  # fmt: skip
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "spec_scale.json").write_text(json.dumps(res, indent=2) + "\n")
    (out / "spec_scale.md").write_text(markdown(res))
    plot(res, out / "spec_scale.png")
    print(markdown(res))


def markdown(res: dict[str, Any]) -> str:
    lines = [
        "## RaLMSpec speed-up against corpus size (issue 11)",
        "",
        f"{res['machine']}; `ralm` on {res['data']} plus synthetic distractors; "
        f"{res['prompts']} prompts, up to {res['max_tokens']} tokens; the best of "
        f"{', '.join(res['variants'])} per point; one run (`python -m benchmarks.spec_scale`).",
        "",
        "![speed-up against corpus size](spec_scale.png)",
        "",
        "| retriever | passages | retrieval share | Amdahl bound | best | speed-up | of the bound "
        "| identical |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for p in res["points"]:
        gain = (p["speedup"] - 1) / max(p["amdahl_bound"] - 1, 1e-9)
        of_bound = f"{gain:.0%}" if p["amdahl_bound"] >= 1.1 else "—"
        lines.append(
            f"| {p['retriever']} | {p['passages']:,} | {p['retrieval_share']:.0%} "
            f"| {p['amdahl_bound']}× | {p['best']} | {p['speedup']}× "
            f"| {of_bound} | {p['identical']}/{p['outputs']} |"
        )
    lines += ["", "`of the bound`: the share of the possible gain taken, (speed-up − 1) / "
              "(bound − 1); — where retrieval is too small a share to measure a gain."]  # fmt: skip
    return "\n".join(lines) + "\n"


def plot(res: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for kind, color in (("dense", "C0"), ("hnsw", "C1"), ("bm25", "C2")):
        pts = [p for p in res["points"] if p["retriever"] == kind]
        if not pts:
            continue
        x = [p["passages"] for p in pts]
        ax.plot(x, [p["speedup"] for p in pts], "o-", color=color, label=f"{kind}: speed-up")
        ax.plot(x, [p["amdahl_bound"] for p in pts], "--", color=color, alpha=0.6,
                label=f"{kind}: Amdahl bound")  # fmt: skip
    ax.set_xscale("log")
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_xlabel("passages in the corpus")
    ax.set_ylabel("speed-up over the plain loop (×)")
    ax.set_title("RaLMSpec in ralm: speed-up against corpus size")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
