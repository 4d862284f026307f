"""The ``ragserve`` command as a user runs it: a real process, real exit codes and messages."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def ragserve(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ragserve.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_build_info_verify_and_errors(tmp_path: Path, corpus_file: Path) -> None:
    r = ragserve(
        "index", "build", "--corpus", str(corpus_file), "--name", "small", "--quiet", cwd=tmp_path
    )
    assert r.returncode == 0 and "5 passages" in r.stdout
    assert '"passages": 5' in ragserve("index", "info", "small", cwd=tmp_path).stdout
    assert ragserve("index", "verify", "small", cwd=tmp_path).stdout.strip().endswith("OK")

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "text": "x"}\n{oops\n')
    r = ragserve("index", "build", "--corpus", str(bad), "--name", "bad", cwd=tmp_path)
    assert r.returncode == 2
    assert (
        r.stderr.strip().splitlines()[-1]
        == f"error: {bad}:2: invalid JSON (Expecting property name "
        "enclosed in double quotes at column 2)"
    )
    assert not (tmp_path / "indexes" / "bad").exists()
    r = ragserve("index", "info", "missing", cwd=tmp_path)
    assert r.returncode == 2 and "index 'missing' not found" in r.stderr
    assert "Traceback" not in r.stderr


def test_ask_prints_answer_and_sources(demo_index_dir: Path, tmp_path: Path) -> None:
    r = ragserve(
        "ask",
        "What does the nonlocal statement do?",
        "--index-dir",
        str(demo_index_dir),
        "--max-tokens",
        "32",
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    answer, sources = r.stdout.split("Sources:")
    assert answer.strip()
    assert "nonlocal" in sources and sources.count("[") == 4


def test_sigterm_during_a_build_removes_its_work_folder(tmp_path: Path) -> None:
    """SIGTERM is handled like Ctrl-C: the build stops, its hidden folder goes, exit 143."""
    root = tmp_path / "indexes"
    proc = subprocess.Popen(
        [sys.executable, "-m", "ragserve.cli", "index", "build", "--demo", "--quiet",
         "--index-dir", str(root)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not (root.is_dir() and any(p.name.startswith(".") for p in root.iterdir())):
            assert proc.poll() is None and time.monotonic() < deadline, "no work folder appeared"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 143 and err.strip().endswith("terminated")
    assert list(root.iterdir()) == []
