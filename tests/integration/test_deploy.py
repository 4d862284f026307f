"""The deployment files, checked without a container runtime: hadolint on the Dockerfiles,
the Kubernetes schemas on every manifest, settings named in them that ragserve knows, and the
images' entrypoint script run directly (index build, serve, drain on SIGTERM)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from ragserve.config import Settings, env_name, load_settings
from tests.conftest import ROOT, free_port

pytestmark = pytest.mark.integration

DEPLOY = ROOT / "deploy"
MANIFESTS = sorted((DEPLOY / "k8s").glob("*.yaml"))
BIN = Path(sys.executable).parent
KNOWN_ENV = {env_name(f) for f in Settings.__dataclass_fields__} | {
    "RAGSERVE_CONFIG", "RAGSERVE_CORPUS", "RAGSERVE_BUILD_INDEX"
}  # fmt: skip


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.cuda"])
def test_dockerfiles_pass_hadolint(dockerfile: str) -> None:
    out = subprocess.run([str(BIN / "hadolint"), "--no-color", "--failure-threshold", "info",
                          str(DEPLOY / dockerfile)], capture_output=True, text=True)  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr


def documents() -> list[tuple[Path, dict]]:
    return [(p, d) for p in MANIFESTS for d in yaml.safe_load_all(p.read_text()) if d]


def test_manifests_match_the_kubernetes_schemas() -> None:
    import kubernetes_validate

    kinds = set()
    for path, doc in documents():
        try:
            kubernetes_validate.validate(doc, "1.30.0", strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{path.name}: {doc['kind']} {doc['metadata']['name']}: {e.message}")
        kinds.add(doc["kind"])
    want = {"Deployment", "Service", "HorizontalPodAutoscaler", "ConfigMap", "Job"}
    assert want <= kinds


def test_probes_scrape_annotations_and_resources() -> None:
    deployments = {d["metadata"]["name"]: d for _, d in documents() if d["kind"] == "Deployment"}
    pod = deployments["ragserve"]["spec"]["template"]
    assert pod["metadata"]["annotations"]["prometheus.io/path"] == "/metrics"
    container = pod["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/health"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health/live"
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["indexes"]["readOnly"] is True
    # The grace period covers the server's drain.
    assert pod["spec"]["terminationGracePeriodSeconds"] > Settings().drain_timeout
    assert "nvidia.com/gpu" in deployments["vllm"]["spec"]["template"]["spec"]["containers"][0][
        "resources"]["limits"]  # fmt: skip


def env_names(node: object) -> set[str]:
    """Every RAGSERVE_* variable set anywhere in a parsed compose file or manifest."""
    if isinstance(node, dict):
        found = {node["name"]} if "name" in node and "value" in node else set()
        for key, value in node.items():
            if key == "environment" and isinstance(value, dict):
                found |= set(value)
            found |= env_names(value)
        return {n for n in found if n.startswith("RAGSERVE_")}
    if isinstance(node, list):
        return set().union(*(env_names(v) for v in node)) if node else set()
    return set()


def test_settings_named_in_deploy_files_exist() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    names = env_names(compose) | env_names([d for _, d in documents()])
    assert names and names <= KNOWN_ENV, names - KNOWN_ENV
    for dockerfile in ("Dockerfile", "Dockerfile.cuda"):
        text = (DEPLOY / dockerfile).read_text()
        assert set(re.findall(r"RAGSERVE_[A-Z_]+", text)) <= KNOWN_ENV
    config = next(d for _, d in documents() if d["kind"] == "ConfigMap")["data"]["ragserve.toml"]
    path = DEPLOY / "k8s" / ".ragserve.toml.test"
    try:
        path.write_text(config)
        settings, sources = load_settings(path, environ={})
    finally:
        path.unlink()
    assert settings.generator == "openai" and sources["upstream"].endswith(".toml.test")
    assert "ragserve-auto" in settings.presets
    assert compose["services"]["ragserve"]["depends_on"]["vllm"]["condition"] == "service_healthy"
    assert (ROOT / compose["services"]["ragserve"]["build"]["dockerfile"]).is_file()


def entrypoint(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    full = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", **env}
    cmd = ["sh", str(DEPLOY / "entrypoint.sh"), *args]
    return subprocess.Popen(cmd, env=full, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)  # fmt: skip


def test_entrypoint_builds_the_index_serves_and_drains(tmp_path: Path, corpus_file: Path) -> None:
    port = free_port()
    env = {"RAGSERVE_INDEX_DIR": str(tmp_path / "indexes"), "RAGSERVE_INDEX": "tiny",
           "RAGSERVE_CORPUS": str(corpus_file), "RAGSERVE_HOST": "127.0.0.1",
           "RAGSERVE_PORT": str(port), "RAGSERVE_N_CTX": "1024"}  # fmt: skip
    proc = entrypoint([], env)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        assert proc.poll() is None, proc.communicate()[0]
        r = httpx.post(f"http://127.0.0.1:{port}/v1/retrieve",
                       json={"query": "gzip compression", "k": 1}, timeout=30)  # fmt: skip
        assert r.status_code == 200, r.text
        assert r.json()["data"][0]["citations"][0]["doc_id"] == "py-gzip"
        assert (tmp_path / "indexes" / "tiny" / "manifest.json").is_file()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_entrypoint_refuses_a_missing_index_it_may_not_build(tmp_path: Path) -> None:
    env = {"RAGSERVE_INDEX_DIR": str(tmp_path), "RAGSERVE_INDEX": "absent",
           "RAGSERVE_BUILD_INDEX": "0"}  # fmt: skip
    proc = entrypoint(["serve"], env)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 2
    assert "index absent not found" in out and "RAGSERVE_BUILD_INDEX=0" in out


def test_entrypoint_runs_other_commands_as_given(tmp_path: Path) -> None:
    proc = entrypoint(["ragserve", "--version"], {})
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0 and out.startswith("ragserve ")
