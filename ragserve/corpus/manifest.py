"""``manifest.json``: what an index folder holds and how it was built, to check and rebuild it.

Retrievers record their own parameters under ``retrievers.<name>``; ``files`` holds a SHA-256 per
file, which ``index verify`` recomputes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ragserve.errors import InputError, NotFoundError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"


def sha256_file(path: Path, block: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def checksum_tree(root: Path) -> dict[str, str]:
    """SHA-256 of every file under ``root`` except the manifest, keyed by relative path."""
    return {
        p.relative_to(root).as_posix(): sha256_file(p)
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }


@dataclass
class Manifest:
    name: str
    corpus: dict[str, Any]
    retrievers: dict[str, dict[str, Any]] = field(default_factory=dict)
    build: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def save(self, folder: Path) -> None:
        data = {
            "format_version": self.format_version,
            "name": self.name,
            "corpus": self.corpus,
            "retrievers": self.retrievers,
            "build": self.build,
            "files": self.files,
        }
        (folder / MANIFEST).write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")

    @classmethod
    def load(cls, folder: Path) -> Manifest:
        path = folder / MANIFEST
        if not path.is_file():
            raise NotFoundError(f"no manifest in {folder} (not an index folder, or a failed build)")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise InputError(f"{path}: corrupt manifest ({e.msg})") from None
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise InputError(
                f"{path}: index format {version} is not supported (expected {FORMAT_VERSION});"
                " rebuild the index"
            )
        return cls(
            name=data["name"],
            corpus=data["corpus"],
            retrievers=data.get("retrievers", {}),
            build=data.get("build", {}),
            files=data.get("files", {}),
        )

    def verify(self, folder: Path) -> list[str]:
        """Problems found by recomputing checksums; empty when the folder is intact."""
        actual = checksum_tree(folder)
        problems = [f"missing file: {f}" for f in self.files if f not in actual]
        problems += [f"unexpected file: {f}" for f in actual if f not in self.files]
        problems += [
            f"checksum mismatch: {f}"
            for f, digest in self.files.items()
            if f in actual and actual[f] != digest
        ]
        return problems
