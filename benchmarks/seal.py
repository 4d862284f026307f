"""SEAL benchmark (issue 12): generated keys against the query's own n-grams, side by side.

On each evaluation set, in one run with the bundled model: ``fmindex`` (the query's maximal
n-grams that occur in the corpus), ``seal`` (keys the model writes under the FM-index's
constraint, intersective scoring), ``seal-lmfm`` (the same keys, best key per passage),
``seal-text`` (without the key-phrase beam: passage text and titles, as the paper), and the
hybrids with and without seal. Then: latency per query alone (p50 and its split), every key
checked against the corpus, and the FM-index's size (compact alphabet, compressed on disk)
against the layout before it, with ``count`` speed of both.

    python -m benchmarks.seal --data ../shared/data --out benchmarks/results [--limit 300]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import pickle
import platform
import random
import statistics
import tempfile
import time
import zlib
from dataclasses import replace
from pathlib import Path
from typing import Any

from benchmarks import machine
from ragserve.engine.seal import SealRetriever
from ragserve.eval.datasets import load_dataset
from ragserve.eval.report import fused, open_eval_index
from ragserve.eval.retrieval import metrics_for, ranked_docs
from ragserve.generation.llama_cpp import LlamaCppGenerator
from ragserve.retrieval.fmindex import LEGACY_CLOSE, LEGACY_OPEN, Alphabet, FMIndexRetriever

SETS = ("scifact", "hotpotqa", "nq")
NAMES = ("fmindex", "seal", "seal-lmfm", "seal-text", "bm25+dense", "bm25+dense+fmindex",
         "bm25+dense+seal")  # fmt: skip


def quality(data: Path, root: Path, gen: LlamaCppGenerator, limit: int) -> dict[str, Any]:
    ds = load_dataset(data)
    ds = replace(ds, queries=ds.queries[:limit])
    index = open_eval_index(ds, root, ["bm25", "dense", "fmindex"], progress=False)
    try:
        doc_of = index.docstore.doc_ids()
        loaded = dict(index.retrievers)
        seal = SealRetriever(loaded["fmindex"], gen)
        loaded["seal"] = seal
        loaded["seal-lmfm"] = seal.variant(scoring="lm+fm")
        loaded["seal-text"] = seal.variant(query_beam=0)  # passage text and titles only
        texts = [q for _, q in ds.queries]
        out: dict[str, Any] = {"queries": len(texts), "passages": len(index.docstore)}
        for name in NAMES:
            r = loaded[name] if name in loaded else fused(loaded, name)
            t = time.perf_counter()
            hits = r.search(texts, 100)
            secs = time.perf_counter() - t
            runs = [ranked_docs(h, doc_of) for h in hits]
            out[name] = {**metrics_for(ds, runs), "s_per_query": round(secs / len(texts), 4)}
            print(data.name, name, json.dumps(out[name]), flush=True)
        keys = [k for ks in asyncio.run(seal.keys(texts)) for k in ks]  # cached by now
        fm = loaded["fmindex"]
        out["keys"] = {
            "checked": len(keys),
            "in_corpus": sum(fm.count(k.tokens, title=k.title) > 0 for k in keys),
            "title_keys": sum(k.title for k in keys),
            "mean_tokens": round(statistics.mean(len(k.tokens) for k in keys), 2),
        }
        return out
    finally:
        index.close()


def latency(data: Path, root: Path, gen: LlamaCppGenerator, n: int) -> dict[str, Any]:
    """Queries one at a time, each its own search: what a request waits."""
    ds = load_dataset(data)
    index = open_eval_index(ds, root, ["fmindex"], progress=False)
    try:
        seal = SealRetriever(index.retrievers["fmindex"], gen)
        seal.search([ds.queries[-1][1]], 10)  # warm: the shared prompt head is evaluated once
        seal.timing.__init__()  # type: ignore[misc]
        walls = []
        for _, q in ds.queries[:n]:
            t = time.perf_counter()
            seal.search([q], 10)
            walls.append(time.perf_counter() - t)
        tm = seal.timing
        return {
            "queries": n,
            "p50_s": round(statistics.median(walls), 3),
            "p90_s": round(sorted(walls)[int(0.9 * (n - 1))], 3),
            "mean_s": round(statistics.mean(walls), 3),
            "model_steps_s_per_query": round(tm.model_s / n, 3),
            "index_probes_s_per_query": round(tm.index_s / n, 3),
            "scoring_s_per_query": round(tm.scoring_s / n, 3),
            "steps_per_query": round(tm.steps / n, 2),
            "beam": seal.config.beam,
            "title_beam": seal.config.title_beam,
            "query_beam": seal.config.query_beam,
            "candidates": seal.config.candidates,
            "key_tokens": seal.config.key_tokens,
        }
    finally:
        index.close()


def size(data: Path, root: Path, gen: LlamaCppGenerator) -> dict[str, Any]:
    """The FM-index on disk and in memory, against the one-character-per-vocabulary-id layout."""
    from fm_index import MultiFMIndex

    ds = load_dataset(data)
    index = open_eval_index(ds, root, ["fmindex"], progress=False)
    try:
        texts = [p.full_text for p in index.docstore.iter_passages()]
        fm: FMIndexRetriever = index.retrievers["fmindex"]  # type: ignore[assignment]
        plain = sum(len(t.encode()) for t in texts)
        with tempfile.TemporaryDirectory() as tmp:
            fm.save(Path(tmp))
            disk = sum(p.stat().st_size for p in Path(tmp).iterdir())
        memory = len(pickle.dumps(fm._index, protocol=pickle.HIGHEST_PROTOCOL))
        legacy_alpha = Alphabet(None)
        tokenized = []
        for text in texts:
            title, _, body = text.partition("\n") if "\n" in text else ("", "", text)
            head = gen.tokenize(" " + title.strip()) if title.strip() else []
            tokenized.append((head, gen.tokenize(body)))
        legacy = MultiFMIndex(
            [
                LEGACY_OPEN + legacy_alpha.encode(t) + LEGACY_CLOSE + legacy_alpha.encode(b)  # type: ignore[operator]
                for t, b in tokenized
            ]
        )
        legacy_bytes = len(pickle.dumps(legacy, protocol=pickle.HIGHEST_PROTOCOL))
        rng = random.Random(0)
        grams = []
        while len(grams) < 3000:
            _, body = rng.choice(tokenized)
            if len(body) > 8:
                i = rng.randrange(len(body) - 6)
                grams.append(body[i : i + rng.randint(1, 6)])
        ours_p = [fm.alphabet.encode(g) for g in grams]
        old_p = [legacy_alpha.encode(g) for g in grams]

        def per_count(index, patterns) -> float:  # type: ignore[no-untyped-def]
            best = float("inf")
            for _ in range(3):
                t = time.perf_counter()
                for p in patterns:
                    index.count_all(p)
                best = min(best, time.perf_counter() - t)
            return best / len(patterns) * 1e6

        ours_us, old_us = per_count(fm._index, ours_p), per_count(legacy, old_p)
        return {
            "plain_text_bytes": plain,
            "tokens": fm.total_tokens,
            "alphabet": len(fm.alphabet.tokens),  # type: ignore[arg-type]
            "disk_bytes": disk,
            "disk_vs_text": round(disk / plain, 3),
            "memory_bytes": memory,
            "memory_vs_text": round(memory / plain, 3),
            "legacy_bytes": legacy_bytes,
            "legacy_vs_text": round(legacy_bytes / plain, 3),
            "zlib_of_legacy_vs_text": round(len(zlib.compress(pickle.dumps(legacy), 6)) / plain, 3),
            "count_us": round(ours_us, 2),
            "legacy_count_us": round(old_us, 2),
            "count_slowdown": round(ours_us / old_us, 2),
        }
    finally:
        index.close()


def markdown(res: dict[str, Any]) -> str:
    lines = [
        "# SEAL benchmark",
        "",
        f"Machine: {res['machine']}. Model: {res['model']} (base, zero-shot). Run with"
        " `python -m benchmarks.seal`; numbers from `seal.json`. Beams: 15 of passage text,"
        " 5 of titles, 15 of the question's key phrases (`seal-text`: none of these), the"
        " model's top 64 tokens per beam and step before the FM-index's filter, keys up to 10"
        " tokens, intersective scoring (alpha 2, beta 0.8).",
        "",
    ]
    for name in SETS:
        q = res["quality"].get(name)
        if not q:
            continue
        metrics = [k for k in q["seal"] if k != "s_per_query"]
        lines += [
            f"## {name} ({q['queries']} queries, {q['passages']:,} passages)",
            "",
            "| retriever | " + " | ".join(metrics) + " | s/query |",
            "|---|" + "---|" * (len(metrics) + 1),
        ]
        for r in NAMES:
            row = q[r]
            lines.append(
                f"| {r} | "
                + " | ".join(str(row[m]) for m in metrics)
                + f" | {row['s_per_query']} |"
            )
        k = q["keys"]
        lines += [
            "",
            f"Keys: {k['checked']:,} generated, {k['in_corpus']:,} occur in the corpus"
            f" ({k['title_keys']:,} whole titles; {k['mean_tokens']} tokens on average).",
            "",
        ]
    lines += ["## Against the targets", "", "| set | metric | fmindex | seal | best hybrid"
              " without seal | bm25+dense+seal |", "|---|---|---|---|---|---|"]  # fmt: skip
    for name in SETS:
        q = res["quality"].get(name)
        if not q:
            continue
        for m in ("ndcg@10",) if name == "scifact" else ("recall@2", "recall@10"):
            best = max(("bm25+dense", "bm25+dense+fmindex"), key=lambda r: q[r][m])
            lines.append(
                f"| {name} | {m} | {q['fmindex'][m]} | {q['seal'][m]} | {q[best][m]} ({best})"
                f" | {q['bm25+dense+seal'][m]} |"
            )
    lines.append("")
    lat = res["latency"]
    lines += [
        f"## Latency, one query per search (SciFact, {lat['queries']} queries)",
        "",
        "| p50 s | p90 s | mean s | model steps s | index probes s | scoring s | steps |",
        "|---|---|---|---|---|---|---|",
        f"| {lat['p50_s']} | {lat['p90_s']} | {lat['mean_s']} | {lat['model_steps_s_per_query']}"
        f" | {lat['index_probes_s_per_query']} | {lat['scoring_s_per_query']}"
        f" | {lat['steps_per_query']} |",
        "",
        "## FM-index size (SciFact)",
        "",
        "| layout | bytes | vs plain text |",
        "|---|---|---|",
    ]
    s = res["size"]
    lines += [
        f"| plain text | {s['plain_text_bytes']:,} | 1.00× |",
        f"| before: a character per vocabulary id, pickled | {s['legacy_bytes']:,}"
        f" | {s['legacy_vs_text']}× |",
        f"| compact alphabet ({s['alphabet']:,} ids), in memory | {s['memory_bytes']:,}"
        f" | {s['memory_vs_text']}× |",
        f"| compact alphabet, zlib on disk (what is stored) | {s['disk_bytes']:,}"
        f" | {s['disk_vs_text']}× |",
        "",
        f"`count` of 3,000 corpus n-grams (1–6 tokens): {s['count_us']} µs against"
        f" {s['legacy_count_us']} µs before ({s['count_slowdown']}×).",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--limit", type=int, default=300, help="queries per set")
    ap.add_argument("--latency-queries", type=int, default=40)
    ap.add_argument("--sets", default=",".join(SETS))
    ap.add_argument("--index-dir", default="indexes")
    ap.add_argument(
        "--parts",
        default="latency,size,quality",
        help="what to measure; the rest is kept from seal.json",
    )
    args = ap.parse_args()
    data = Path(args.data)
    gen = LlamaCppGenerator(slots=1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    parts = set(args.parts.split(","))
    saved = out / "seal.json"
    res: dict[str, Any] = json.loads(saved.read_text()) if saved.is_file() else {"quality": {}}
    res["machine"] = f"{machine()}, Python {platform.python_version()}"
    res["model"] = gen.model_name
    root = Path(args.index_dir)  # evaluation indexes are built there once, then reused

    def save() -> None:  # after every part: a long run that stops keeps what it measured
        saved.write_text(json.dumps(res, indent=2) + "\n")

    if "latency" in parts:
        res["latency"] = latency(data / "scifact", root, gen, args.latency_queries)
        save()
    if "size" in parts:
        res["size"] = size(data / "scifact", root, gen)
        save()
    if "quality" in parts:
        for name in args.sets.split(","):
            res["quality"][name] = quality(data / name, root, gen, args.limit)
            save()
    asyncio.run(gen.aclose())
    if all(k in res for k in ("latency", "size")):
        (out / "seal.md").write_text(markdown(res))
        print(markdown(res))


if __name__ == "__main__":
    main()
