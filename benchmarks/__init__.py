"""Benchmarks: each module runs by hand (``python -m benchmarks.NAME``) and commits its results."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_results(out: Path, name: str, res: dict[str, Any], md: str) -> None:
    """``NAME.json`` and ``NAME.md`` under ``out``, and the Markdown on stdout."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(res, indent=2) + "\n")
    (out / f"{name}.md").write_text(md)
    print(md)


def machine() -> str:
    """The CPU a result was measured on: absolute times differ several-fold between the
    AVX-512 and AVX2-only hosts this project's sessions get, so results say which."""
    import os
    import platform

    model, flags = platform.machine(), ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = "AVX-512" if "avx512f" in value.split() else "AVX2, no AVX-512"
                break
    except OSError:
        pass
    return ", ".join(x for x in (model, flags, f"{os.cpu_count()} cores") if x)
