"""Plots of a request-rate sweep (``ragserve bench serve --request-rate 1,2,4 --plot DIR``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def sweep_plots(runs: list[dict[str, Any]], folder: Path) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover
        from ragserve.errors import InputError

        raise InputError("plots need matplotlib: pip install matplotlib") from None
    folder.mkdir(parents=True, exist_ok=True)
    cdf = folder / "latency_cdf.png"
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for run in runs:
        for ax, key, title in ((axes[0], "ttfts", "TTFT"), (axes[1], "e2els", "end-to-end")):
            xs = sorted(v for v, e in zip(run[key], run["errors"], strict=True) if not e)
            ys = [(i + 1) / len(xs) for i in range(len(xs))]
            ax.plot(xs, ys, label=f"{run['request_rate']:g} req/s")
            ax.set(xlabel=f"{title} latency (s)", ylabel="fraction of requests", title=title)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(cdf, dpi=100)
    plt.close(fig)
    rate = folder / "throughput_vs_rate.png"
    fig, ax = plt.subplots(figsize=(6, 4))
    rates = [r["request_rate"] for r in runs]
    ax.plot(rates, [r["request_throughput"] for r in runs], "o-", label="completed req/s")
    ax.set(xlabel="offered request rate (req/s)", ylabel="throughput (req/s)")
    ax2 = ax.twinx()
    ax2.plot(rates, [r["p99_e2el_ms"] / 1000 for r in runs], "s--", color="tab:red")
    ax2.set_ylabel("p99 end-to-end latency (s)", color="tab:red")
    fig.tight_layout()
    fig.savefig(rate, dpi=100)
    plt.close(fig)
    return [cdf, rate]
