"""Auto-RAG against ``single`` on the shared QA sets, side by side in one run (issue 9).

``single`` gets as many passages as ``auto_rag`` read on average, rounded up, from the same
retriever, model and index.

    .venv/bin/python -m benchmarks.qa --limit 100   # RAGSERVE_DATA or ../shared/data

Writes ``benchmarks/results/qa.{json,md}`` (``--name`` another stem).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
from pathlib import Path

from benchmarks import machine
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

# Extra auto_rag rows: the flag that asks for one, its label, what it changes, what that means.
VARIANTS = (
    ("ungrounded", "auto_rag ungrounded", {"grounded_answers": False},
     "the same, but a turn's Final Answer ends the loop whether or not the passages read hold"
     " it (as before `grounded_answers`)."),
    ("literal", "auto_rag literal", {"anchor_queries": False, "evidence_answer": False},
     "the model's own queries and final answer, as the paper runs it."),
)  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--limit", type=int, default=100)
    ap.add_argument("--retriever", default="bm25")
    ap.add_argument("--sets", default="hotpotqa,nq")
    ap.add_argument("--concurrency", type=int, default=4, help="questions at once (same answers)")
    ap.add_argument("--name", default="qa", help="results file stem in benchmarks/results")
    ap.add_argument("--literal", action="store_true",
                    help="also auto_rag with the model's own queries and answer")  # fmt: skip
    ap.add_argument("--ungrounded", action="store_true",
                    help="also auto_rag taking any Final Answer, held or not")  # fmt: skip
    ap.add_argument("--add", action="store_true",
                    help="keep the rows in the results file; run only the extra ones")  # fmt: skip
    args = ap.parse_args()
    saved = RESULTS / f"{args.name}.json"
    if args.add and not saved.exists():
        ap.error(f"--add keeps the rows of {saved}, which does not exist yet")
    settings = Settings.load()
    generator = create_generator(settings)
    rows: dict[str, dict] = json.loads(saved.read_text()) if args.add else {}
    try:
        for name in args.sets.split(","):
            data = settings.data_dir / name
            index = open_eval_index(load_dataset(data), settings.index_dir, [args.retriever])
            engine = Engine(index.retrievers, index.docstore, generator, args.retriever)

            def run(rag: RagOptions, data: Path = data, engine: Engine = engine) -> dict:
                return run_qa_eval(data, engine, rag, limit=args.limit,
                                   concurrency=args.concurrency).flat()  # fmt: skip

            if not args.add:
                auto = run(RagOptions("auto_rag", retriever=args.retriever))
                k = max(1, math.ceil(auto["passages_read_mean"]))
                rows[f"{name}/single"] = run(RagOptions("single", k=k, retriever=args.retriever))
                rows[f"{name}/auto_rag"] = auto
            for flag, label, changes, _ in VARIANTS:
                if getattr(args, flag):
                    extra = RagOptions("auto_rag", retriever=args.retriever, **changes)
                    rows[f"{name}/{label}"] = {**run(extra), "strategy": label}
            index.close()
    finally:
        asyncio.run(generator.aclose())
    RESULTS.mkdir(exist_ok=True)
    saved.write_text(json.dumps(rows, indent=2) + "\n")
    lines = [
        "# Auto-RAG vs single (issue 9)",
        "",
        f"Machine: {machine()}. Bundled Gemma 3 270M (base), {args.retriever}, first"
        f" {args.limit} questions of each set,"
        " one run; `single` given as many passages as `auto_rag` read on average (rounded up)."
        f" {args.concurrency} questions at a time (answers as when run alone; latencies include"
        " the shared model). `auto_rag`: queries anchored on the question, answer over the"
        " passages read, a final answer the passages read do not hold searched on (the"
        " defaults for base models)."
        + "".join(
            f" `{label}`: {meaning}"
            for _, label, _, meaning in VARIANTS
            if any(r["strategy"] == label for r in rows.values())
        ),
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
    hist = {k: r["retrievals_histogram"] for k, r in rows.items() if "auto_rag" in k}
    lines += ["", f"Retrievals per question (auto_rag): {json.dumps(hist)}", ""]
    (RESULTS / f"{args.name}.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
