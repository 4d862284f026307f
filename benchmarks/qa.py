"""Auto-RAG against ``single`` on the shared QA sets, side by side in one run (issue 9).

``single`` gets as many passages as ``auto_rag`` read on average, rounded up, from the same
retriever, model and index.

    .venv/bin/python -m benchmarks.qa --limit 100   # RAGSERVE_DATA or ../shared/data

Writes ``benchmarks/results/qa.{json,md}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
from pathlib import Path

from ragserve.config import Settings
from ragserve.engine import RagOptions
from ragserve.engine.core import Engine
from ragserve.eval.datasets import load_dataset
from ragserve.eval.qa import run_qa_eval
from ragserve.eval.report import open_eval_index
from ragserve.generation.factory import create_generator

RESULTS = Path(__file__).parent / "results"
COLUMNS = ["em", "f1", "support_recall", "passages_read_mean", "retrievals_mean", "empty_share",
           "looping_share", "answer_words_mean", "latency_p50_s", "latency_p90_s"]  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--limit", type=int, default=100)
    ap.add_argument("--retriever", default="bm25")
    ap.add_argument("--sets", default="hotpotqa,nq")
    args = ap.parse_args()
    settings = Settings.load()
    generator = create_generator(settings)
    rows: dict[str, dict] = {}
    try:
        for name in args.sets.split(","):
            data = settings.data_dir / name
            index = open_eval_index(load_dataset(data), settings.index_dir, [args.retriever])
            engine = Engine(index.retrievers, index.docstore, generator, args.retriever)
            auto = run_qa_eval(data, engine, RagOptions("auto_rag", retriever=args.retriever),
                               limit=args.limit)  # fmt: skip
            k = max(1, math.ceil(auto.metrics["passages_read_mean"]))
            single = run_qa_eval(data, engine, RagOptions("single", k=k, retriever=args.retriever),
                                 limit=args.limit)  # fmt: skip
            index.close()
            for report in (single, auto):
                rows[f"{name}/{report.settings['strategy']}"] = report.flat()
    finally:
        asyncio.run(generator.aclose())
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "qa.json").write_text(json.dumps(rows, indent=2) + "\n")
    lines = [
        "# Auto-RAG vs single (issue 9)",
        "",
        f"Bundled Gemma 3 270M (base), {args.retriever}, first {args.limit} questions of each set,"
        " one run; `single` given as many passages as `auto_rag` read on average (rounded up).",
        "",
        "| set | strategy | k | " + " | ".join(COLUMNS) + " |",
        "|---|---|---|" + "---|" * len(COLUMNS),
    ]
    for r in rows.values():
        lines.append(
            f"| {r['data']} | {r['strategy']} | {r['k'] or ''} | "
            + " | ".join(str(r[c]) for c in COLUMNS)
            + " |"
        )
    hist = {k: r["retrievals_histogram"] for k, r in rows.items() if r["strategy"] == "auto_rag"}
    lines += ["", f"Retrievals per question (auto_rag): {json.dumps(hist)}", ""]
    (RESULTS / "qa.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
