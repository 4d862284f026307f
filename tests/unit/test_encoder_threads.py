"""OpenMP in the process that runs the model: encoding leaves no thread pool behind, and
libgomp's spin count is ours unless set outside.

libgomp keeps a pool for every thread that started a parallel region; once pools outnumber the
cores it stops spinning at barriers, and llama.cpp's decode in the same process ran 1.6x slower
(``ragserve.retrieval.encoders``, ``benchmarks/results/omp_pools.md``). Run in a fresh process,
since the test process may hold pools from other tests.
"""

import os
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


def spin_count(env: dict[str, str]) -> str:
    run = subprocess.run(
        [sys.executable, "-c", "import os, ragserve; print(os.environ['GOMP_SPINCOUNT'])"],
        env=env, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return run.stdout.strip()


def test_importing_ragserve_sets_a_short_spin_unless_one_is_set() -> None:
    """Set at import, before torch or llama.cpp loads libgomp, which reads it only then."""
    env = {k: v for k, v in os.environ.items() if k != "GOMP_SPINCOUNT"}
    assert spin_count(env) == "1000"
    assert spin_count({**env, "GOMP_SPINCOUNT": "5"}) == "5"


def test_a_reference_program_gets_the_environment_as_given() -> None:
    code = "import ragserve; print(ragserve.environ_as_given().get('GOMP_SPINCOUNT'))"
    env = {k: v for k, v in os.environ.items() if k != "GOMP_SPINCOUNT"}
    for given, expected in ((env, "None"), ({**env, "GOMP_SPINCOUNT": "5"}, "5")):
        run = subprocess.run(
            [sys.executable, "-c", code], env=given, capture_output=True, text=True, check=True
        )
        assert run.stdout.strip() == expected
