"""The one ``ragserve`` command. Thin: parse flags, call one indexing/engine function, format.

User errors print one line (``error: ...``) and exit 2; no traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ragserve import __version__
from ragserve.config import Settings, load_settings
from ragserve.errors import InputError, RagServeError

if TYPE_CHECKING:
    from ragserve.engine.events import Step


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(getattr(args, "config", None), vars(args))[0]


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--index-dir", help="folder holding index folders (default: ./indexes)")
    p.add_argument(
        "--config", help="TOML settings file (default: $RAGSERVE_CONFIG); env and flags override"
    )


def _demo_is_stale(folder: Path) -> str:
    """Why a demo index must be rebuilt (it came from another revision of the demo corpus, or
    its manifest cannot be read); empty if it is current."""
    from ragserve.corpus.demo import demo_source
    from ragserve.corpus.manifest import Manifest

    try:
        built = Manifest.load(folder).corpus.get("source")
    except RagServeError as e:
        return e.message
    return "" if built == demo_source() else f"{built}, now {demo_source()}"


def cmd_index_build(args: argparse.Namespace) -> int:
    from ragserve.corpus import ChunkingConfig
    from ragserve.corpus.demo import DEMO_NAME, demo_documents, demo_source
    from ragserve.indexing import build_from_file, build_index, documents_checksum, list_indexes

    settings = _settings(args)
    chosen = args.retrievers or ("bm25,dense" if args.shards > 1 else "bm25,dense,fmindex")
    retrievers = [r.strip() for r in chosen.split(",") if r.strip()]
    chunking = ChunkingConfig(max_words=args.chunk_words, overlap=args.chunk_overlap)
    if args.demo == bool(args.corpus):
        raise RagServeError("give exactly one of --corpus FILE or --demo")
    name = args.name or (DEMO_NAME if args.demo else None)
    if not name:
        raise RagServeError("--name is required with --corpus")
    if args.if_missing and name in list_indexes(settings.index_dir):
        stale = args.demo and _demo_is_stale(settings.index_dir / name)
        if not stale:
            print(f"index {name!r} already built in {settings.index_dir}")
            return 0
        print(f"index {name!r} was built from an older demo corpus ({stale}): rebuilding")
    options = {"dense": {"factory": args.dense_factory, "precision": args.encoder_precision}}
    common = {
        "retrievers": retrievers,
        "chunking": chunking,
        "progress": not args.quiet,
        "retriever_options": options,
        "shards": args.shards,
    }
    if args.demo:
        docs = demo_documents()
        source = {"source": demo_source(), "sha256": documents_checksum(docs)}
        manifest = build_index(docs, source, name, settings.index_dir, **common)
    else:
        manifest = build_from_file(args.corpus, name, settings.index_dir, **common)
    print(
        f"built index {name!r}: {manifest.corpus['documents']} documents,"
        f" {manifest.corpus['passages']} passages, retrievers {', '.join(manifest.retrievers)}"
        f" in {manifest.build['seconds']:.1f}s → {settings.index_dir / name}"
        + (f" ({args.shards} shards)" if args.shards > 1 else "")
    )
    return 0


def cmd_index_info(args: argparse.Namespace) -> int:
    from ragserve.indexing import open_manifest

    path, _ = open_manifest(_settings(args).index_dir, args.name)
    print(
        json.dumps(
            {"path": str(path), **json.loads((path / "manifest.json").read_text())}, indent=2
        )
    )
    return 0


def cmd_index_verify(args: argparse.Namespace) -> int:
    from ragserve.indexing import verify_index

    problems = verify_index(_settings(args).index_dir, args.name)
    for p in problems:
        print(f"  {p}")
    print(f"index {args.name!r}: " + ("OK" if not problems else f"{len(problems)} problem(s)"))
    return 0 if not problems else 1


def cmd_index_list(args: argparse.Namespace) -> int:
    from ragserve.indexing import list_indexes

    for name in list_indexes(_settings(args).index_dir):
        print(name)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from ragserve.indexing import open_manifest
    from ragserve.server.app import create_app
    from ragserve.server.lifecycle import DrainingServer

    settings = _settings(args)
    for name in settings.served_indexes():  # fail fast, before uvicorn starts
        open_manifest(settings.index_dir, name)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    app = create_app(settings)
    config = uvicorn.Config(
        app, host=settings.host, port=settings.port, log_level="info", timeout_graceful_shutdown=5
    )
    server = DrainingServer(config, app, settings.drain_timeout)
    server.run()
    return 1 if server.failed else 0


def cmd_config_show(args: argparse.Namespace) -> int:
    from ragserve.config import describe

    settings, sources = load_settings(args.config, vars(args))
    rows = describe(settings, sources)
    if args.json:
        print(json.dumps({n: {"value": v, "source": s} for n, v, s in rows}, indent=2))
        return 0
    width = max(len(n) for n, _, _ in rows)
    for name, value, source in rows:
        print(f"{name:<{width}}  {value}  ({source})")
    return 0


def cmd_ask(args: argparse.Namespace) -> int:
    from ragserve.engine import Finished, RagOptions, RagRequest, Retrieved, Step, TokenText
    from ragserve.generation.base import SamplingParams
    from ragserve.server.app import load_engine

    settings = _settings(args)
    request = RagRequest(
        messages=[{"role": "user", "content": args.question}],
        params=SamplingParams(max_tokens=args.max_tokens),
        rag=RagOptions(
            strategy=args.strategy,
            k=args.k,
            retriever=args.retriever,
            max_iterations=args.max_iterations,
            trace=args.trace,
        ),
    )

    async def run() -> None:
        engine, index = await asyncio.to_thread(load_engine, settings)
        citations = []
        try:
            async for event in engine.run(request):
                if isinstance(event, Step) and args.trace:
                    print(_trace_line(event), file=sys.stderr, flush=True)
                elif isinstance(event, Retrieved):
                    citations.extend(event.citations)
                elif isinstance(event, TokenText):
                    print(event.text, end="", flush=True)
                elif isinstance(event, Finished):
                    print()
        finally:
            await engine.generator.aclose()
            index.close()
        print("\nSources:")
        for c in citations:
            name = c.title or c.external_id
            print(f"  [{c.index}] {name} ({c.external_id}, score {c.score:.2f})")

    asyncio.run(run())
    return 0


def _trace_line(step: Step) -> str:
    """One step of an iterative strategy as a readable line (``ask --trace``)."""
    head = f"[{step.iteration or 'end'}] {step.kind:<10} {step.seconds:5.2f}s"
    if step.kind == "retrieval":
        return f"{head}  query {step.query!r} → {', '.join(step.passages)}"
    return f"{head}  {' '.join(step.text.split())[:300]}"


def cmd_eval_retrieval(args: argparse.Namespace) -> int:
    from ragserve.eval.report import run_retrieval_eval

    settings = _settings(args)
    data = args.data or settings.data_dir / "scifact"
    retrievers = [r.strip() for r in args.retrievers.split(",") if r.strip()]
    generator = None
    if any("seal" in r.split("+") for r in retrievers):
        from ragserve.generation.factory import create_generator

        generator = create_generator(settings)  # SEAL's keys are written by the model
    try:
        report = run_retrieval_eval(
            data,
            settings.index_dir,
            retrievers,
            rebuild=args.rebuild,
            dense_factory=args.dense_factory,
            generator=generator,
            limit=args.limit,
        )
    finally:
        if generator is not None:
            asyncio.run(generator.aclose())
    print(report.table())
    if args.json:
        report.write_json(args.json)
        print(f"wrote {args.json}")
    return 0


def cmd_eval_qa(args: argparse.Namespace) -> int:
    from ragserve.engine import RagOptions
    from ragserve.engine.core import Engine
    from ragserve.engine.seal import with_seal
    from ragserve.eval.datasets import load_dataset
    from ragserve.eval.qa import run_qa_eval
    from ragserve.eval.report import open_eval_index
    from ragserve.generation.factory import create_generator
    from ragserve.retrieval.registry import with_hybrid

    if args.concurrency < 1:
        raise InputError("--concurrency must be at least 1")
    settings = _settings(args)
    data = Path(args.data) if args.data else settings.data_dir / "hotpotqa"
    rag = RagOptions(
        strategy=args.strategy,
        k=args.k,
        retriever=args.retriever,
        max_iterations=args.max_iterations,
        max_passages=args.max_passages,
    )
    index = open_eval_index(load_dataset(data), settings.index_dir, [args.retriever])
    generator = create_generator(settings)
    try:
        retrievers = with_seal(with_hybrid(index.retrievers), generator)
        engine = Engine(retrievers, index.docstore, generator, args.retriever)
        report = run_qa_eval(
            data,
            engine,
            rag,
            limit=args.limit,
            max_tokens=args.max_tokens,
            concurrency=args.concurrency,
        )
    finally:
        asyncio.run(generator.aclose())
        index.close()
    print(report.table())
    if args.json:
        Path(args.json).write_text(json.dumps(report.flat(), indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


def cmd_bench_spec(args: argparse.Namespace) -> int:
    from ragserve.eval.datasets import load_dataset
    from ragserve.eval.report import open_eval_index
    from ragserve.eval.spec import (
        VARIANTS,
        bench,
        bench_retriever,
        markdown,
    )
    from ragserve.generation.factory import create_generator

    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise InputError(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
    settings = _settings(args)
    data = Path(args.data) if args.data else settings.data_dir / "hotpotqa"
    dataset = load_dataset(data)
    # Only the retriever measured is built (BM25 alone needs no encoder); others stay.
    stored = "bm25" if args.retriever == "bm25" else "dense"
    index = open_eval_index(dataset, settings.index_dir, [stored])
    generator = create_generator(settings)
    try:
        retriever, docs = bench_retriever(index, args.retriever, args.distractors)
        questions = [q for _, q in dataset.queries[: args.num_prompts]]
        rows = bench(
            generator, retriever, docs, questions, variants, args.max_tokens, args.strategy
        )
    finally:
        asyncio.run(generator.aclose())
        index.close()
    res = {
        "data": dataset.name, "retriever": args.retriever, "strategy": args.strategy,
        "passages": len(retriever), "distractors": args.distractors,
        "prompts": len(questions), "max_tokens": args.max_tokens, "rows": rows,
    }  # fmt: skip
    print(markdown(res))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


def cmd_bench_serve(args: argparse.Namespace) -> int:
    from ragserve.client import load

    settings = _settings(args)
    try:
        rag = json.loads(args.rag) if args.rag else None
    except ValueError:
        rag = "bad"
    if rag is not None and not isinstance(rag, dict):
        raise RagServeError("--rag must be a JSON object")
    goodput = load.parse_goodput(args.goodput or [])
    try:
        rates = [float(r) for r in args.request_rate.split(",")] if args.request_rate else []
    except ValueError:
        raise RagServeError(
            f"--request-rate {args.request_rate!r}: numbers, comma-separated"
        ) from None
    if not rates and args.concurrency is None:
        raise RagServeError("give --request-rate R (open loop) or --concurrency C (closed loop)")
    prompts, bad = load.load_prompts(args.dataset, Path(settings.data_dir), args.num_requests)
    for line in bad:
        print(f"error: {line} (skipped)", file=sys.stderr)
    prompts = (prompts * (args.num_requests // len(prompts) + 1))[: args.num_requests]
    try:
        asyncio.run(load.check_endpoint(args.url, args.api_key))
    except RagServeError as e:
        if args.json:
            load.write(Path(args.json), {"error": e.message, "url": args.url, "bad_lines": bad})
        raise
    runs = []
    for rate in rates or [float("inf")]:
        outcomes, duration = asyncio.run(
            load.run(
                args.url, prompts, model=args.model, max_tokens=args.max_tokens, rag=rag,
                request_rate=rate, burstiness=args.burstiness, concurrency=args.concurrency,
                seed=args.seed, api_key=args.api_key, progress=not args.quiet,
                endpoint=args.endpoint, ignore_eos=args.ignore_eos,
            )
        )  # fmt: skip
        res = load.summarize(outcomes, duration, goodput)
        res.update(
            request_rate=rate, burstiness=args.burstiness, max_concurrency=args.concurrency,
            num_prompts=len(prompts), dataset=args.dataset, url=args.url, model=args.model,
            rag=rag, max_tokens=args.max_tokens, bad_lines=bad,
        )  # fmt: skip
        runs.append(res)
        print(f"request rate {rate:g}:" if len(runs) > 1 or len(rates) > 1 else "results:")
        for line in load.summary_lines(res):
            print(f"  {line}")
    if args.json:
        load.write(Path(args.json), runs[0] if len(runs) == 1 else {"runs": runs})
        print(f"wrote {args.json}")
    if len(runs) > 1 and args.plot:
        from ragserve.client.plots import sweep_plots

        for path in sweep_plots(runs, Path(args.plot)):
            print(f"wrote {path}")
    failed = sum(r["failed"] for r in runs)
    if failed:
        first = next(e for r in runs for e in r["errors"] if e)
        print(f"error: {failed} requests failed; the first: {first}", file=sys.stderr)
    return 1 if failed or bad else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ragserve", description=__doc__)
    parser.add_argument("--version", action="version", version=f"ragserve {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    index = sub.add_parser("index", help="build, inspect and verify index folders")
    isub = index.add_subparsers(dest="index_command", required=True)
    b = isub.add_parser("build", help="build an index from a corpus (atomic)")
    b.add_argument("--corpus", help="JSONL file ({id,title,text}) or BEIR folder")
    b.add_argument("--demo", action="store_true", help="the bundled Python documentation")
    b.add_argument("--name", help="index name (default for --demo: python-docs)")
    b.add_argument(
        "--retrievers",
        help="comma-separated subset of bm25,dense,fmindex (default: all three; bm25,dense"
        " with --shards)",
    )
    b.add_argument(
        "--shards",
        type=int,
        default=1,
        help="split bm25 and dense by passage range into N shard folders (serve with --ray)",
    )
    b.add_argument(
        "--dense-factory",
        default="Flat",
        help="faiss index factory string: Flat, HNSW32, IVF256,PQ32x8 ...",
    )
    b.add_argument(
        "--encoder-precision",
        help="bf16 (default where the CPU supports it), fp32, or fp32-st (reference)",
    )
    b.add_argument("--chunk-words", type=int, default=100, help="passage size; 0 = whole docs")
    b.add_argument("--chunk-overlap", type=int, default=20, help="words shared by neighbours")
    b.add_argument("--if-missing", action="store_true", help="do nothing if already built")
    b.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_common(b)
    b.set_defaults(func=cmd_index_build)
    for name, func, text in [
        ("info", cmd_index_info, "print an index's manifest"),
        ("verify", cmd_index_verify, "recompute checksums"),
    ]:
        p = isub.add_parser(name, help=text)
        p.add_argument("name")
        _add_common(p)
        p.set_defaults(func=func)
    p = isub.add_parser("list", help="list built indexes")
    _add_common(p)
    p.set_defaults(func=cmd_index_list)

    def add_engine_flags(p: argparse.ArgumentParser) -> None:
        _add_common(p)
        p.add_argument("--index", help="index name (default: python-docs)")
        p.add_argument("--generator", help="llama_cpp (default), openai (an upstream) or vllm")
        p.add_argument(
            "--model",
            help="GGUF path for llama_cpp (default: the bundled Gemma 3"
            " 270M); model name for openai; Hugging Face id or folder for vllm (default: the"
            " bundled model, exported once to a Hugging Face folder)",
        )
        p.add_argument("--upstream", help="OpenAI-compatible base URL for --generator openai")
        p.add_argument(
            "--tokenizer",
            help="GGUF whose tokenizer --generator openai uses locally"
            " (default: the bundled model's)",
        )
        p.add_argument("--n-ctx", type=int, help="context window (default: 4096)")
        p.add_argument("--n-threads", type=int, help="CPU threads for the model")
        p.add_argument(
            "--slots", type=int, help="requests llama_cpp decodes in one batch (default: 8)"
        )
        p.add_argument(
            "--nondeterministic",
            dest="deterministic",
            action="store_const",
            const=False,
            help="llama_cpp: faster prompt evaluation, but greedy outputs may depend on the batch",
        )
        p.add_argument(
            "--retriever", help="default retriever (default: hybrid if built, else bm25)"
        )

    s = sub.add_parser("serve", help="start the OpenAI-compatible server")
    add_engine_flags(s)
    s.add_argument("--host", help="bind address (default: 127.0.0.1)")
    s.add_argument("--port", type=int, help="port (default: 8000)")
    s.add_argument("--max-queued", type=int, help="requests in flight before 503 (default: 64)")
    s.add_argument(
        "--max-body-bytes", type=int, help="larger request bodies get 413 (default: 1048576)"
    )
    s.add_argument(
        "--max-iterations", type=int, help="most auto_rag turns a request may ask for (default: 10)"
    )
    _add_server_flags(s)
    s.set_defaults(func=cmd_serve)

    cfg = sub.add_parser("config", help="inspect the effective settings")
    csub = cfg.add_subparsers(dest="config_command", required=True)
    show = csub.add_parser("show", help="every setting, its value and where it came from")
    add_engine_flags(show)
    show.add_argument("--host")
    show.add_argument("--port", type=int)
    show.add_argument("--max-queued", type=int)
    _add_server_flags(show)
    show.add_argument("--json", action="store_true", help="as JSON")
    show.set_defaults(func=cmd_config_show)

    ev = sub.add_parser("eval", help="measure retrieval (and later answers) on evaluation data")
    esub = ev.add_subparsers(dest="eval_command", required=True)
    er = esub.add_parser("retrieval", help="nDCG@10, recall@k, queries/s, build time")
    er.add_argument("--data", help="BEIR folder or QA folder (default: $RAGSERVE_DATA/scifact)")
    er.add_argument(
        "--retrievers",
        "--retriever",
        default="bm25,dense,fmindex,hybrid",
        help="comma-separated: bm25, dense, fmindex, hybrid, seal, or parts fused as a+b+c",
    )
    er.add_argument("--limit", type=int, help="the first N queries only")
    er.add_argument("--dense-factory", default="Flat", help="faiss factory string")
    er.add_argument("--rebuild", action="store_true", help="rebuild the evaluation index")
    er.add_argument("--json", help="write the metrics as one flat JSON object")
    _add_common(er)
    er.set_defaults(func=cmd_eval_retrieval)

    eq = esub.add_parser("qa", help="answer EM/F1, supporting recall, iterations, latency")
    eq.add_argument("--data", help="QA folder (default: $RAGSERVE_DATA/hotpotqa)")
    eq.add_argument("--strategy", default="auto_rag", choices=["single", "auto_rag", "none"])
    eq.add_argument("--retriever", default="bm25", help="bm25, dense or hybrid (default: bm25)")
    eq.add_argument("--k", type=int, default=4, help="single: passages (default: 4)")
    eq.add_argument("--max-iterations", type=int, default=5, help="auto_rag turns (default: 5)")
    eq.add_argument("--max-passages", type=int, default=2, help="auto_rag: per step (default: 2)")
    eq.add_argument("--max-tokens", type=int, default=64, help="answer length (default: 64)")
    eq.add_argument("--limit", type=int, help="the first N questions only")
    eq.add_argument("--concurrency", type=int, default=1,
                    help="questions at once (default: 1; same answers, faster)")  # fmt: skip
    eq.add_argument("--json", help="write the metrics as one flat JSON object")
    eq.add_argument("--n-ctx", type=int, help="context window (default: 4096)")
    _add_common(eq)
    eq.set_defaults(func=cmd_eval_qa)

    bench = sub.add_parser("bench", help="measure serving strategies side by side")
    bsub = bench.add_subparsers(dest="bench_command", required=True)
    bs = bsub.add_parser("spec", help="RaLMSpec against the plain loop, outputs checked")
    bs.add_argument("--data", help="QA folder (default: $RAGSERVE_DATA/hotpotqa)")
    bs.add_argument("--retriever", default="dense", choices=["dense", "hnsw", "bm25"],
                    help="dense (exact, faiss Flat), hnsw (approximate) or bm25")  # fmt: skip
    bs.add_argument("--strategy", default="ralm", choices=["ralm", "auto_rag"])
    bs.add_argument("--num-prompts", type=int, default=20)
    bs.add_argument("--variants", default="spec,P,S,A,PSA", help="of spec, P, S, A, PSA")
    bs.add_argument("--distractors", type=int, default=0, help="synthetic passages to add")
    bs.add_argument("--max-tokens", type=int, default=128)
    bs.add_argument("--json", help="write the results as JSON")
    bs.add_argument("--n-ctx", type=int, help="context window (default: 4096)")
    _add_common(bs)
    bs.set_defaults(func=cmd_bench_spec)

    bv = bsub.add_parser("serve", help="load-test any OpenAI-compatible endpoint")
    bv.add_argument("--url", required=True, help="server root, e.g. http://127.0.0.1:8000")
    bv.add_argument("--dataset", default="hotpotqa", help="hotpotqa, nq, or a JSONL file")
    bv.add_argument("--num-requests", type=int, default=100)
    bv.add_argument("--request-rate", help="requests/s, or a sweep 1,2,4,8 (default: inf)")
    bv.add_argument("--burstiness", type=float, default=1.0, help="gamma shape; 1 = Poisson")
    bv.add_argument("--concurrency", type=int, help="at most C in flight (closed loop alone)")
    bv.add_argument("--model", help="model id to send (default: the server's)")
    bv.add_argument("--rag", help='the rag object as JSON, e.g. \'{"strategy": "auto_rag"}\'')
    bv.add_argument("--max-tokens", type=int, default=64)
    bv.add_argument("--endpoint", choices=["chat", "completions"], default="chat",
                    help="/v1/chat/completions (default) or /v1/completions")  # fmt: skip
    bv.add_argument("--ignore-eos", action="store_true", help="generate on to --max-tokens")
    bv.add_argument("--goodput", nargs="*", help="SLOs as ttft:MS e2el:MS tpot:MS")
    bv.add_argument("--api-key", help="bearer key")
    bv.add_argument("--seed", type=int, default=0)
    bv.add_argument("--json", help="write the results as JSON")
    bv.add_argument("--plot", help="folder for sweep plots (PNG)")
    bv.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_common(bv)
    bv.set_defaults(func=cmd_bench_serve)

    a = sub.add_parser("ask", help="answer one question on the command line")
    add_engine_flags(a)
    a.add_argument("question")
    a.add_argument(
        "--strategy",
        default="single",
        choices=["single", "auto_rag", "none"],
        help="single: retrieve once; auto_rag: the model retrieves in turns; none: no retrieval",
    )
    a.add_argument("--trace", action="store_true", help="print each step (auto_rag) on stderr")
    a.add_argument("--max-iterations", type=int, default=5, help="auto_rag turns (default: 5)")
    a.add_argument("--k", type=int, default=4, help="passages to retrieve (default: 4)")
    a.add_argument("--max-tokens", type=int, default=256)
    a.set_defaults(func=cmd_ask)
    return parser


def _add_server_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--indexes", help="more indexes to serve beside --index, comma-separated")
    p.add_argument("--default-model", help="the preset a request without `model` gets")
    p.add_argument("--rate-limit", type=int, help="requests per key per --rate-period (no limit)")
    p.add_argument("--rate-period", type=float, help="seconds (default: 60)")
    p.add_argument("--request-timeout", type=float, help="seconds a request may run (300)")
    p.add_argument("--drain-timeout", type=float, help="seconds to finish after SIGTERM (30)")
    p.add_argument(
        "--ray",
        "--ray-address",
        dest="ray_address",
        metavar="ADDRESS",
        help="run the shards of sharded indexes on this Ray cluster (local: start one)",
    )
    p.add_argument("--shard-replicas", type=int, help="Ray Serve replicas per shard (1)")
    p.add_argument("--shard-cpus", type=float, help="CPUs each shard replica reserves (1)")
    p.add_argument("--shard-timeout", type=float, help="seconds before a shard counts as down (10)")
    p.add_argument("--shard-failure", choices=["error", "partial"],
                   help="a shard down: error (503, default) or partial results")  # fmt: skip


class Terminated(KeyboardInterrupt):
    """SIGTERM, unwound like Ctrl-C so that an index build removes its work folder."""


def _terminate(signum: int, frame: object) -> None:
    raise Terminated


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)  # `serve` replaces it with uvicorn's own
    try:
        return int(args.func(args))
    except RagServeError as e:
        print(f"error: {e.message}", file=sys.stderr)
        return 2
    except Terminated:
        print("terminated", file=sys.stderr)
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
