"""Encoding leaves no OpenMP thread pool behind in the process that also runs the model.

libgomp keeps a pool for every thread that started a parallel region; once pools outnumber the
cores it stops spinning at barriers, and llama.cpp's decode in the same process ran 1.6x slower
(``ragserve.retrieval.encoders``, ``benchmarks/results/omp_pools.md``). Run in a fresh process,
since the test process may hold pools from other tests.
"""

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = """
import os, threading, time
from ragserve.retrieval.encoders import load_encoder

def native_threads():  # OpenMP's among them; Python's own (tqdm's monitor, say) left out
    time.sleep(0.5)  # a released pool's threads take a moment to exit
    return len(os.listdir("/proc/self/task")) - len(threading.enumerate())

encoder = load_encoder()
encoder._tokenizer.encode_batch(["warm up", "the tokenizer's own pool"] * 20)  # made once, kept
before = native_threads()
encoder.encode(["a passage about reading json files"] * 40)  # three batches
encoder.encode_query("how do I read json")
print(before, native_threads())
"""


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="counts threads in /proc")
def test_encoding_a_corpus_and_a_query_leaves_no_thread_behind() -> None:
    run = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300, check=True
    )
    before, after = map(int, run.stdout.split()[-2:])
    assert after == before, f"{after - before} thread(s) left behind"
