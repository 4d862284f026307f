"""Corpus loaders: JSONL (``{id,title,text}``) and BEIR folders (``corpus.jsonl`` with ``_id``).

Every error names the file and line, so a user can fix a corpus of millions of lines.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from ragserve.corpus.documents import Document
from ragserve.errors import InputError, NotFoundError


def corpus_file(path: str | Path) -> Path:
    """The JSONL file behind ``path``: the file itself, or ``corpus.jsonl`` in a BEIR folder."""
    p = Path(path)
    if p.is_dir():
        p = p / "corpus.jsonl"
    if not p.is_file():
        raise NotFoundError(f"corpus file not found: {p}")
    return p


def load_corpus(path: str | Path) -> Iterator[Document]:
    """Yield the documents of a JSONL file or BEIR folder, validating as it goes.

    Raises ``InputError`` on malformed JSON, a missing id, an empty text or a duplicate id.
    """
    p = corpus_file(path)
    seen: dict[str, int] = {}
    with p.open("r", encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{p}:{lineno}"
            try:
                # Without its newline, an error at the end of the line is reported there, not
                # at column 1 of a line that does not exist.
                record = json.loads(line.rstrip("\r\n"))
            except json.JSONDecodeError as e:
                raise InputError(f"{where}: invalid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(record, dict):
                raise InputError(f"{where}: expected a JSON object, got {type(record).__name__}")
            raw_id = record.get("id", record.get("_id"))
            if raw_id is None or isinstance(raw_id, (dict, list, bool)) or str(raw_id) == "":
                raise InputError(f"{where}: missing 'id' (or BEIR '_id')")
            doc_id = str(raw_id)
            if doc_id in seen:
                raise InputError(
                    f"{where}: duplicate id {doc_id!r} (first seen on line {seen[doc_id]})"
                )
            seen[doc_id] = lineno
            title = record.get("title") or ""
            text = record.get("text")
            if not isinstance(text, str) or not text.strip():
                raise InputError(f"{where}: empty or missing 'text' for id {doc_id!r}")
            if not isinstance(title, str):
                raise InputError(f"{where}: 'title' must be a string for id {doc_id!r}")
            yield Document(id=doc_id, title=title.strip(), text=text.strip())
    if not seen:
        raise InputError(f"{p}: no documents")
