"""SQLite docstore: passage text lives here, never in a retriever.

One file, opened read-only for serving; a lock makes one connection safe across the worker
threads that retrieval and the server use.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from ragserve.corpus.documents import Passage
from ragserve.errors import InputError, NotFoundError

_SCHEMA = """
CREATE TABLE passages (
    id INTEGER PRIMARY KEY,
    external_id TEXT NOT NULL UNIQUE,
    doc_id TEXT NOT NULL,
    title TEXT NOT NULL,
    text TEXT NOT NULL
);
"""
_COLUMNS = "id, external_id, doc_id, title, text"


class DocStore:
    """Passages by dense integer id; ids are 0..n-1 in corpus order."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise NotFoundError(f"docstore not found: {self.path}")
        uri = f"file:{self.path.resolve()}?mode=ro"
        self._conn = sqlite3.connect(uri, uri=True, check_same_thread=False)
        self._lock = threading.Lock()
        self._count = self._conn.execute("SELECT COUNT(*) FROM passages").fetchone()[0]

    @staticmethod
    def create(path: str | Path, passages: Iterable[Passage], batch: int = 2000) -> int:
        """Write a new docstore at ``path`` (which must not exist); return the passage count."""
        path = Path(path)
        if path.exists():
            raise InputError(f"refusing to overwrite existing docstore: {path}")
        conn = sqlite3.connect(path)
        try:
            conn.execute("PRAGMA journal_mode=OFF")
            conn.execute("PRAGMA synchronous=OFF")
            conn.executescript(_SCHEMA)
            rows: list[tuple[int, str, str, str, str]] = []
            n = 0
            for p in passages:
                rows.append((p.id, p.external_id, p.doc_id, p.title, p.text))
                if len(rows) >= batch:
                    n += _insert(conn, rows)
            n += _insert(conn, rows)
            conn.commit()
        except sqlite3.IntegrityError as e:
            raise InputError(f"duplicate passage id in corpus ({e})") from None
        finally:
            conn.close()
        return n

    def __len__(self) -> int:
        return self._count

    def get(self, ids: Sequence[int]) -> list[Passage]:
        """Passages in the order of ``ids``; unknown ids raise ``InputError``."""
        if not ids:
            return []
        unique = sorted(set(int(i) for i in ids))
        found: dict[int, Passage] = {}
        with self._lock:
            for start in range(0, len(unique), 900):
                chunk = unique[start : start + 900]
                marks = ",".join("?" * len(chunk))
                for row in self._conn.execute(
                    f"SELECT {_COLUMNS} FROM passages WHERE id IN ({marks})", chunk
                ):
                    found[row[0]] = Passage(*row)
        missing = [i for i in unique if i not in found]
        if missing:
            raise InputError(f"unknown passage ids: {missing[:5]}")
        return [found[int(i)] for i in ids]

    def iter_passages(self, batch: int = 5000) -> Iterator[Passage]:
        """All passages in id order, without holding the lock between batches."""
        last = -1
        while True:
            with self._lock:
                rows = self._conn.execute(
                    f"SELECT {_COLUMNS} FROM passages WHERE id > ? ORDER BY id LIMIT ?",
                    (last, batch),
                ).fetchall()
            if not rows:
                return
            for row in rows:
                yield Passage(*row)
            last = rows[-1][0]

    def doc_ids(self) -> list[str]:
        """Source document id of every passage, indexed by passage id."""
        with self._lock:
            return [r[0] for r in self._conn.execute("SELECT doc_id FROM passages ORDER BY id")]

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def _insert(conn: sqlite3.Connection, rows: list[tuple[int, str, str, str, str]]) -> int:
    conn.executemany(f"INSERT INTO passages ({_COLUMNS}) VALUES (?, ?, ?, ?, ?)", rows)
    n = len(rows)
    rows.clear()
    return n
