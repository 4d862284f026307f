"""Schema fuzzing with schemathesis against the real server's own ``/openapi.json``: no 5xx and
every response as documented (issue 8's acceptance)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import LiveServer

pytestmark = pytest.mark.integration


def test_openapi_document_survives_schemathesis(live_server: LiveServer, tmp_path: Path) -> None:
    st = shutil.which("st", path=str(Path(sys.executable).parent))
    assert st, "schemathesis is a dev dependency (make install)"
    r = subprocess.run(
        [st, "run", f"{live_server.url}/openapi.json", "--no-color",
         "--checks", "not_a_server_error,response_schema_conformance",
         "--max-examples", "6", "--seed", "1", "--request-timeout", "120",
         "--max-time", "45"],
        cwd=tmp_path,  # its example database stays out of the tree
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip
    summary = r.stdout[-3000:]
    assert r.returncode == 0, summary
    assert "/v1/chat/completions" in r.stdout or "4 selected" in r.stdout, summary
    assert " passed" in summary and "failed" not in summary.split("Test cases:")[-1], summary
