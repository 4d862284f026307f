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
