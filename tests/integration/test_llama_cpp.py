"""The real bundled model via llama.cpp: determinism, prefix reuse, stops, limits, cancel."""

from __future__ import annotations

import asyncio
import hashlib
import random
import time

import llama_cpp
import pytest

from ragserve.errors import ContextLengthError, InputError, NotFoundError
from ragserve.generation.base import SamplingParams
from ragserve.generation.llama_cpp import AHEAD, LlamaCppGenerator
from ragserve.generation.llama_step import ignore_logits

pytestmark = pytest.mark.integration

GREEDY = SamplingParams(max_tokens=24)


async def collect(gen: LlamaCppGenerator, prompt, params=GREEDY):  # type: ignore[no-untyped-def]
    chunks = [c async for c in gen.generate(prompt, params)]
    ids = [t for c in chunks for t in c.token_ids]
    return "".join(c.text for c in chunks), ids, chunks[-1]


def test_greedy_is_deterministic_whatever_ran_before(generator: LlamaCppGenerator) -> None:
    prompts = [
        "The capital of France is",
        "Python's nonlocal statement",
        "The capital of France is Paris, and the capital of Italy is",
    ]

    async def run() -> list[list[int]]:
        # Interleave so each prompt runs once cold and once right after a prompt sharing its prefix.
        out = []
        for p in [*prompts, *reversed(prompts), *prompts]:
            out.append((await collect(generator, p))[1])
        return out

    runs = asyncio.run(run())
    n = len(prompts)
    first, second, third = runs[:n], runs[n : 2 * n][::-1], runs[2 * n :]
    assert first == second == third
    assert all(len(ids) > 0 for ids in first)


def test_prefix_reuse_skips_the_shared_prompt(generator: LlamaCppGenerator) -> None:
    base = "Passages about Python. " * 40

    async def run() -> tuple[int, int]:
        await collect(generator, base + "Question one?", SamplingParams(max_tokens=1))
        before = generator.stats["evaluated_tokens"]
        await collect(generator, base + "Question two?", SamplingParams(max_tokens=1))
        return generator.stats["evaluated_tokens"] - before, len(generator.tokenize(base))

    evaluated, shared = asyncio.run(run())
    assert shared > 200
    # Logits do not depend on how a prompt is chunked, so the cache is reused to the token.
    assert evaluated <= len(generator.tokenize("Question two?")) + 2


def test_usage_length_and_stop(generator: LlamaCppGenerator) -> None:
    text, ids, last = asyncio.run(collect(generator, "1, 2, 3, 4,", SamplingParams(max_tokens=5)))
    assert last.finish_reason == "length" and last.usage.completion_tokens == 5 == len(ids)
    assert last.usage.prompt_tokens == len(generator._prompt_ids("1, 2, 3, 4,"))
    text, _, last = asyncio.run(
        collect(generator, "1, 2, 3, 4,", SamplingParams(max_tokens=40, stop=("7",)))
    )
    assert last.finish_reason == "stop" and "7" not in text and "6" in text


def test_next_token_topk_agrees_with_greedy_generation(generator: LlamaCppGenerator) -> None:
    prompt = generator._prompt_ids("The capital of France is")
    _, ids, _ = asyncio.run(collect(generator, prompt, SamplingParams(max_tokens=3)))
    prefixes = [prompt, prompt + ids[:1], prompt + ids[:2]]
    tops = asyncio.run(generator.next_token_topk(prefixes, 4))
    assert [t[0].token_id for t in tops] == ids
    assert all(t[0].logprob >= t[1].logprob >= t[3].logprob for t in tops)


def test_topk_prefixes_that_do_not_fit_together_go_half_at_a_time(
    generator: LlamaCppGenerator,
) -> None:
    from ragserve.generation.llama_tree import PrefixTree

    words = ["apple", "river", "stone", "cloud"]
    prefixes = [generator.tokenize(f"{w} " * 200)[:200] for w in words]  # 800 tokens, no sharing
    tree = PrefixTree(generator._model, generator._n_vocab, 2, cells=600)
    try:
        together = tree.topk(prefixes, 3)
        alone = [tree.topk([p], 3)[0] for p in prefixes]
        assert [[t.token_id for t in r] for r in together] == [
            [t.token_id for t in r] for r in alone
        ]
        with pytest.raises(RuntimeError, match="600 KV cells"):
            tree.topk([prefixes[0] * 4], 3)
    finally:
        tree.close()


def test_prompt_longer_than_context_names_both_lengths(generator: LlamaCppGenerator) -> None:
    with pytest.raises(ContextLengthError, match=r"prompt is \d+ tokens but .* 2048 tokens"):
        asyncio.run(collect(generator, "word " * 3000))


def test_closing_the_stream_frees_the_model(generator: LlamaCppGenerator) -> None:
    async def run() -> str:
        stream = generator.generate("Once upon a time", SamplingParams(max_tokens=200))
        async for _ in stream:
            break
        await stream.aclose()
        text, _, _ = await asyncio.wait_for(collect(generator, "Hello"), timeout=60)
        return text

    assert isinstance(asyncio.run(run()), str)


def test_bad_model_paths(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(NotFoundError, match="model file not found"):
        LlamaCppGenerator(tmp_path / "missing.gguf")
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a model")
    with pytest.raises(InputError, match="not a GGUF file"):
        LlamaCppGenerator(junk)


def test_concurrent_requests_interleave_and_match_sequential(
    generator: LlamaCppGenerator,
) -> None:
    """Slots: a short request started beside a long one finishes first, with the same tokens."""
    long_p, short_p = "Once upon a time there was", "The capital of France is"

    async def run() -> tuple[list, list, list]:  # type: ignore[type-arg]
        alone = [
            (await collect(generator, p, SamplingParams(max_tokens=n)))[1]
            for p, n in ((long_p, 60), (short_p, 4))
        ]
        done: list[str] = []

        async def tagged(p: str, n: int) -> list[int]:
            _, ids, _ = await collect(generator, p, SamplingParams(max_tokens=n))
            done.append(p)
            return ids

        together = await asyncio.gather(tagged(long_p, 60), tagged(short_p, 4))
        return alone, list(together), done

    alone, together, done = asyncio.run(run())
    assert together == alone
    assert done == [short_p, long_p]


def mixed_prompts(n: int) -> list[str]:
    rng = random.Random(7)
    words = ["lists", "dicts", "sets", "tuples", "generators", "decorators", "classes",
             "modules", "files", "strings"]  # fmt: skip
    return [
        "Notes: " * rng.choice([0, 3, 20, 60]) + f"Explain Python {words[i % 10]}, case {i}."
        for i in range(n)
    ]


def test_outputs_inside_a_busy_batch_equal_the_request_alone(
    generator: LlamaCppGenerator,
) -> None:
    """The same prompts alone, then arriving at random inside a batch: identical token ids."""
    prompts = mixed_prompts(10)
    params = SamplingParams(max_tokens=10)

    async def run() -> tuple[list[list[int]], list[list[int]], int]:
        alone = [(await collect(generator, p, params))[1] for p in prompts]
        widths_before = dict(generator.step_stats.widths)

        async def late(p: str, delay: float) -> list[int]:
            await asyncio.sleep(delay)
            return (await collect(generator, p, params))[1]

        rng = random.Random(3)
        busy = await asyncio.gather(*(late(p, rng.uniform(0, 0.5)) for p in prompts))
        wide = sum(
            n - widths_before.get(w, 0) for w, n in generator.step_stats.widths.items() if w >= 4
        )
        return alone, list(busy), wide

    alone, busy, wide_steps = asyncio.run(run())
    assert wide_steps > 0  # the run did batch several sequences per step
    assert busy == alone


def _cells(generator: LlamaCppGenerator) -> list[tuple[int, int]]:
    """(KV positions the cache holds, tokens the backend believes it holds) per sequence."""
    mem = generator._ctx.memory
    return [
        (llama_cpp.llama_memory_seq_pos_max(mem, s.id) + 1, len(s.tokens)) for s in generator._seqs
    ]


def test_cancelled_streams_free_their_sequences_and_cells(generator: LlamaCppGenerator) -> None:
    """400 streams dropped at random points (queued, mid-prompt, mid-decode): nothing leaks."""
    params = SamplingParams(max_tokens=50)
    base = "Python notes. " * 20

    async def drop(i: int, rng: random.Random) -> None:
        stream = generator.generate(f"{base} item {i % 37}", params)
        try:
            for _ in range(rng.choice([0, 1, 2, 5])):
                await stream.__anext__()
        finally:
            await stream.aclose()

    async def cancel(i: int, rng: random.Random) -> None:
        task = asyncio.ensure_future(collect(generator, f"{base} item {i % 37}", params))
        await asyncio.sleep(rng.uniform(0, 0.05))
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    async def run() -> tuple[list[int], list[int]]:
        before = (await collect(generator, "The capital of France is"))[1]
        rng = random.Random(11)
        for start in range(0, 400, 20):
            await asyncio.gather(
                *((drop if i % 2 else cancel)(i, rng) for i in range(start, start + 20))
            )
        after = (await collect(generator, "The capital of France is"))[1]
        return before, after

    before, after = asyncio.run(run())
    assert after == before
    assert len(generator._free) == len(generator._seqs)  # every sequence handed back
    cells = _cells(generator)
    assert all(held == believed for held, believed in cells), cells
    assert all(held <= generator.context_length for held, _ in cells)


def test_a_request_cancelled_during_its_cache_cut_hands_its_sequence_back_after_it(
    generator: LlamaCppGenerator,
) -> None:
    """The race CI hit: a request queues a cut of its sequence's cached prompt, is cancelled
    while the cut waits behind the worker, and the next request takes that sequence. The cut
    must run before the hand-over, not on the successor's cache."""
    base = "Python notes. " * 20
    first, second, third = (f"{base} item {n}" for n in (10, 5, 12))
    params = SamplingParams(max_tokens=6)

    async def run() -> tuple[list[int], list[int]]:
        solo = (await collect(generator, third, params))[1]
        await generator.reset_prefix_cache()
        await collect(generator, first, params)  # a sequence now caches the shared prefix
        hold = asyncio.ensure_future(generator._loop.call(time.sleep, 0.4))  # worker busy
        cut = asyncio.ensure_future(collect(generator, second, params))
        await asyncio.sleep(0.05)  # it took that sequence and queued a cut behind the sleep
        cut.cancel()
        after = asyncio.ensure_future(collect(generator, third, params))
        await asyncio.gather(cut, hold, return_exceptions=True)
        return solo, (await after)[1]

    solo, after = asyncio.run(run())
    assert after == solo
    assert len(generator._free) == len(generator._seqs)
    assert all(held == believed for held, believed in _cells(generator))


def test_a_bad_request_does_not_disturb_its_batch(generator: LlamaCppGenerator) -> None:
    prompts = mixed_prompts(4)
    params = SamplingParams(max_tokens=10)

    async def run() -> tuple[list, list]:  # type: ignore[type-arg]
        alone = [(await collect(generator, p, params))[1] for p in prompts]
        bad = [
            collect(generator, "word " * 3000, params),  # longer than the context
            collect(generator, [1, 2, 10**9], params),  # a token id outside the vocabulary
        ]
        mixed = await asyncio.gather(
            *(collect(generator, p, params) for p in prompts), *bad, return_exceptions=True
        )
        return alone, list(mixed)

    alone, mixed = asyncio.run(run())
    assert [m[1] for m in mixed[:4]] == alone
    assert isinstance(mixed[4], ContextLengthError) and isinstance(mixed[5], InputError)


def _digest(logits) -> str:  # type: ignore[no-untyped-def]
    return hashlib.sha256(logits.tobytes()).hexdigest()


async def _empty_seqs(generator: LlamaCppGenerator, n: int) -> list[int]:
    """``n`` sequences taken from the generator (lowest ids first), their caches emptied."""
    seqs = [await generator._acquire([]) for _ in range(n)]
    for seq in seqs:
        await generator._loop.call(generator._truncate, seq, 0)
    return [seq.id for seq in seqs]


async def _give_back(generator: LlamaCppGenerator, ids: list[int]) -> None:
    for seq in generator._seqs:
        if seq.id in ids:
            await generator._loop.call(generator._truncate, seq, 0)
            generator._release(seq)


def test_prompts_arriving_together_share_a_call_and_keep_their_logits(
    generator: LlamaCppGenerator,
) -> None:
    """Four prompts of one length in one step: one call for all, not one each; and three of
    unequal lengths (cut into shares); the logits after each are bit-identical to alone."""
    loop_ = generator._loop
    words = generator.tokenize("Lists keep their order, sets drop repeats and dicts map keys.")
    lengths = [10, 10, 10, 10, 6, 9, 13]

    async def run() -> tuple[list[str], list[str], int]:
        seqs = await _empty_seqs(generator, 4)

        async def clear() -> None:
            await loop_.call(lambda: [generator._ctx.kv_cache_seq_rm(s, 0, -1) for s in seqs])

        alone = []
        for n in lengths:
            alone.append(await loop_.submit(seqs[0], 0, words[:n], _digest))
            await clear()
        calls = loop_.stats.decode_calls
        together = await asyncio.gather(
            *(
                loop_.submit(s, 0, words[:n], _digest)
                for s, n in zip(seqs, lengths[:4], strict=True)
            )
        )
        shared_calls = loop_.stats.decode_calls - calls
        await clear()
        together += await asyncio.gather(
            *(
                loop_.submit(s, 0, words[:n], _digest)
                for s, n in zip(seqs[:3], lengths[4:], strict=True)
            )
        )
        await _give_back(generator, seqs)
        return alone, list(together), shared_calls

    alone, together, shared_calls = asyncio.run(run())
    assert shared_calls == 1
    assert together == alone


def test_a_prompt_gets_its_first_token_before_the_step_decodes(
    generator: LlamaCppGenerator,
) -> None:
    """A step with a decoding stream and a new prompt hands the prompt's logits out first."""
    loop_ = generator._loop
    words = generator.tokenize("Tuples are immutable sequences of Python objects.")

    async def run() -> tuple[list[str], int]:
        a, b = seqs = await _empty_seqs(generator, 2)
        await loop_.submit(a, 0, words, _digest)
        await loop_.call(lambda: None)  # that step has ended (its prompt was answered early)
        order: list[str] = []
        steps = loop_.stats.steps
        decode = loop_.submit(a, len(words), words[:1], _digest)
        prompt = loop_.submit(b, 0, words, _digest)
        decode.add_done_callback(lambda _: order.append("decode"))
        prompt.add_done_callback(lambda _: order.append("prompt"))
        await asyncio.gather(decode, prompt)
        await loop_.call(lambda: None)  # the worker counts a step after handing out its results
        step_count = loop_.stats.steps - steps
        await _give_back(generator, seqs)
        return order, step_count

    order, step_count = asyncio.run(run())
    assert step_count == 1  # one step held both
    assert order == ["prompt", "decode"]


def test_a_stream_decodes_on_while_its_reader_is_busy_but_not_far_ahead(
    generator: LlamaCppGenerator,
) -> None:
    """The next decode step is queued on the step loop's thread (``Chain``): with the event
    loop blocked, the stream still takes steps, at most ``AHEAD`` past what was read; then it
    goes on through the event loop, and the tokens are those of an undisturbed run."""
    prompt, params = "A short history of the Python language:", SamplingParams(max_tokens=24)

    async def run() -> tuple[list[int], list[int], int]:
        alone = (await collect(generator, prompt, params))[1]
        tokens: list[int] = []
        during = 0
        async for chunk in generator.generate(prompt, params):
            tokens += chunk.token_ids
            if len(tokens) == 3:
                # Blocks the event loop, not the step loop, until two steps ran (however slow
                # the host), then a while longer for any step past AHEAD.
                before = generator.step_stats.decode_calls
                end = time.monotonic() + 30
                while generator.step_stats.decode_calls - before < 2 and time.monotonic() < end:
                    time.sleep(0.01)
                time.sleep(0.4)
                during = generator.step_stats.decode_calls - before
        return alone, tokens, during

    alone, tokens, during = asyncio.run(run())
    assert 2 <= during <= AHEAD + 1
    assert tokens == alone


def test_a_stop_string_ends_the_chain_and_its_cells(generator: LlamaCppGenerator) -> None:
    """A stop string the step loop cannot see: the steps it ran past it are undone."""
    prompt = "Count: one, two, three, four, five, six, seven"

    async def run() -> tuple[str, str]:
        full = (await collect(generator, prompt, SamplingParams(max_tokens=16)))[0]
        stop = full.strip().split()[2]  # a word a few tokens in
        cut = (await collect(generator, prompt, SamplingParams(max_tokens=16, stop=(stop,))))[0]
        return full, cut

    full, cut = asyncio.run(run())
    assert full.startswith(cut) and len(cut) < len(full)
    cells = _cells(generator)
    assert all(held == believed for held, believed in cells), cells


def test_a_token_past_512_cells_gets_the_same_logits_alone_and_beside_others(
    generator: LlamaCppGenerator,
) -> None:
    """Flash attention on CPU splits a lone sequence's KV cache across threads once it holds
    512 cells (other sums than the row path several sequences take); the backend's bf16 K
    cache keeps every step on the row path. A long sequence's next token, decoded alone and
    then in one step with three others: bit-identical logits."""
    loop_ = generator._loop
    long = generator.tokenize("Lists keep their order, sets drop repeats and dicts map keys. " * 60)
    n = 600
    assert len(long) > n
    short = generator.tokenize("Tuples do not change once made.")

    async def run() -> tuple[str, str, int]:
        seqs = await _empty_seqs(generator, 4)
        for a in range(0, n, 60):  # pieces of two or more, each within a step
            await loop_.submit(seqs[0], a, long[a : min(a + 60, n)], ignore_logits)
        for s in seqs[1:]:
            await loop_.submit(s, 0, short, ignore_logits)
        alone = await loop_.submit(seqs[0], n, long[n : n + 1], _digest)
        await loop_.call(generator._ctx.kv_cache_seq_rm, seqs[0], n, -1)
        calls = loop_.stats.decode_calls
        together = await asyncio.gather(
            loop_.submit(seqs[0], n, long[n : n + 1], _digest),
            *(loop_.submit(s, len(short), short[-1:], _digest) for s in seqs[1:]),
        )
        shared = loop_.stats.decode_calls - calls
        await _give_back(generator, seqs)
        return alone, together[0], shared

    alone, beside, shared_calls = asyncio.run(run())
    assert shared_calls == 1
    assert beside == alone
