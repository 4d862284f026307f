"""The demo corpus as ``make serve`` builds it: nothing of the builder's environment reaches the
index (a signature default of ``os.environ`` once printed every variable, API keys included),
and ``--if-missing`` rebuilds a demo index made from an older revision of the corpus."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ragserve.corpus.demo import demo_documents, demo_source

pytestmark = pytest.mark.integration

SECRET = "sk-ragserve-sentinel-7f3a"


def test_no_environment_variable_or_interpreter_path_in_the_documents(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RAGSERVE_TEST_API_KEY", SECRET)
    docs = demo_documents()
    assert len(docs) > 1000
    leaks = [d.id for d in docs if SECRET in d.text or "environ({" in d.text]
    assert leaks == []
    assert not any(sys.executable in d.text for d in docs)
    by_id = {d.id: d.text for d in docs}
    if "cgi.parse" in by_id:  # the module that printed the environment (gone in Python 3.13)
        assert "environ=os.environ" in by_id["cgi.parse"]
    assert "executable=sys.executable" in by_id["platform.architecture"]


def build(root: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ragserve.cli", "index", "build", "--demo", "--retrievers", "bm25",
         "--quiet", "--index-dir", str(root), *extra],
        capture_output=True, text=True, timeout=600, env={**os.environ, "RAGSERVE_CONFIG": ""},
    )  # fmt: skip


def test_if_missing_rebuilds_a_demo_index_from_an_older_revision(tmp_path: Path) -> None:
    assert build(tmp_path).returncode == 0
    manifest = tmp_path / "python-docs" / "manifest.json"
    data = json.loads(manifest.read_text())
    assert data["corpus"]["source"] == demo_source()
    r = build(tmp_path, "--if-missing")
    assert r.returncode == 0 and "already built" in r.stdout

    data["corpus"]["source"] = "python-docs (Python 3.11.7)"  # revision 1, which leaked
    manifest.write_text(json.dumps(data))
    r = build(tmp_path, "--if-missing")
    assert r.returncode == 0, r.stderr
    assert "older demo corpus" in r.stdout and "built index 'python-docs'" in r.stdout
    assert json.loads(manifest.read_text())["corpus"]["source"] == demo_source()
