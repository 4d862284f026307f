"""ragserve: retrieval-augmented generation behind an OpenAI-compatible API."""

import os

# llama.cpp (its threads meet at an OpenMP barrier hundreds of times a token) and torch share
# libgomp, which reads this once, when it loads: so here, before either is imported. At a
# barrier a thread spins this many times, then sleeps. With libgomp's default, 300,000, a
# token took 4x as long while a faiss search ran beside the model on a 2-core machine: each
# spinning thread held the core its partner needed. With 1,000 it decodes as fast alone and
# beside a search takes 1.3x the time of never spinning, which is 1.7x slower alone
# (``benchmarks/results/omp_pools.md``). A value set outside wins.
_SPIN_GIVEN = os.environ.get("GOMP_SPINCOUNT")
os.environ.setdefault("GOMP_SPINCOUNT", "1000")


def environ_as_given() -> dict[str, str]:
    """The environment without the spin count set above: for a reference program (llama-server
    in the benchmarks) that should run as it would without us."""
    env = dict(os.environ)
    if _SPIN_GIVEN is None:
        env.pop("GOMP_SPINCOUNT", None)
    return env


__version__ = "0.1.0"
