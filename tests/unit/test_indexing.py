import json
import os
import stat
from pathlib import Path

import pytest

from ragserve.corpus import Manifest
from ragserve.errors import InputError, NotFoundError
from ragserve.indexing import build_from_file, list_indexes, load_index, verify_index
from ragserve.retrieval import registry


def test_build_info_verify(tmp_path: Path, corpus_file: Path) -> None:
    root = tmp_path / "indexes"
    m = build_from_file(corpus_file, "small", root, progress=False)
    assert m.corpus["passages"] == 5 and m.corpus["documents"] == 5
    saved = json.loads((root / "small" / "manifest.json").read_text())
    assert saved["format_version"] == 1
    assert saved["corpus"]["sha256"] and saved["corpus"]["source"].endswith("corpus.jsonl")
    assert saved["retrievers"]["bm25"]["variant"] == "lucene"
    assert {"docstore.sqlite", "bm25/weights.npz"} <= set(saved["files"])
    assert "bm25s" in saved["build"]["libraries"]
    assert verify_index(root, "small") == []
    index = load_index(root, "small")
    assert index.retrievers["bm25"].search(["gzip compress"], 1)[0][0].doc_id == 3
    index.close()


def test_verify_detects_tampering(tmp_path: Path, corpus_file: Path) -> None:
    build_from_file(corpus_file, "small", tmp_path, progress=False)
    with (tmp_path / "small" / "docstore.sqlite").open("ab") as f:
        f.write(b"junk")
    assert verify_index(tmp_path, "small") == ["checksum mismatch: docstore.sqlite"]


def test_interrupted_build_leaves_old_index(
    tmp_path: Path, corpus_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    build_from_file(corpus_file, "small", tmp_path, progress=False)
    before = (tmp_path / "small" / "manifest.json").read_text()

    def interrupted(*args: object) -> dict:
        raise KeyboardInterrupt

    kind = registry.KINDS["bm25"]
    monkeypatch.setitem(
        registry.KINDS, "bm25", registry.RetrieverKind("bm25", interrupted, kind.load)
    )
    with pytest.raises(KeyboardInterrupt):
        build_from_file(corpus_file, "small", tmp_path, progress=False)
    assert (tmp_path / "small" / "manifest.json").read_text() == before
    assert verify_index(tmp_path, "small") == []
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folder left


def test_rebuild_replaces_and_bad_corpus_changes_nothing(tmp_path: Path, corpus_file: Path) -> None:
    build_from_file(corpus_file, "small", tmp_path, progress=False)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "text": "x"}\n{"id": "a", "text": "y"}\n')
    with pytest.raises(InputError, match="duplicate id"):
        build_from_file(bad, "small", tmp_path, progress=False)
    assert Manifest.load(tmp_path / "small").corpus["passages"] == 5
    assert list_indexes(tmp_path) == ["small"]


def test_bad_names_and_missing_indexes(tmp_path: Path, corpus_file: Path) -> None:
    with pytest.raises(InputError, match="invalid index name"):
        build_from_file(corpus_file, "../escape", tmp_path, progress=False)
    with pytest.raises(NotFoundError, match="index 'nope' not found"):
        load_index(tmp_path, "nope")
    with pytest.raises(InputError, match="unknown retriever"):
        build_from_file(corpus_file, "x", tmp_path, retrievers=["magic"], progress=False)


def test_manifest_format_version_is_checked(tmp_path: Path, corpus_file: Path) -> None:
    build_from_file(corpus_file, "small", tmp_path, progress=False)
    path = tmp_path / "small" / "manifest.json"
    data = json.loads(path.read_text())
    data["format_version"] = 99
    path.write_text(json.dumps(data))
    with pytest.raises(InputError, match="format 99 is not supported"):
        load_index(tmp_path, "small")


def _dead_pid() -> int:
    pid = 999_999
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        pid -= 1


def test_stale_temporaries_of_dead_builds_are_removed_and_never_listed(
    tmp_path: Path, corpus_file: Path
) -> None:
    dead, live = _dead_pid(), os.getppid()
    stale = [tmp_path / f".small.tmp-{dead}-0a1b2c3d", tmp_path / f".small.old-{dead}"]
    running = tmp_path / f".other.tmp-{live}-0a1b2c3d"  # a build still running elsewhere
    for p in [*stale, running]:
        p.mkdir()
        (p / "manifest.json").write_text("{}")
    assert list_indexes(tmp_path) == []  # hidden work folders are never indexes
    build_from_file(corpus_file, "small", tmp_path, progress=False)
    assert not any(p.exists() for p in stale)
    assert running.exists()
    assert list_indexes(tmp_path) == ["small"]


def test_index_folders_follow_the_umask(tmp_path: Path, corpus_file: Path) -> None:
    old = os.umask(0o022)
    try:
        build_from_file(corpus_file, "small", tmp_path, progress=False)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "small").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "small" / "bm25").stat().st_mode) == 0o755


def test_eval_index_grows_without_losing_a_retriever(tmp_path: Path, corpus_file: Path) -> None:
    """Measuring BM25 builds BM25 alone (no encoder); measuring dense later adds dense and keeps
    BM25, so one benchmark never builds away what another measured."""
    from ragserve.eval.datasets import Dataset
    from ragserve.eval.report import open_eval_index

    data = Dataset("tiny", "qa", corpus_file, [("q1", "gzip")], {"q1": {"3": 1}})
    index = open_eval_index(data, tmp_path, ["bm25"], progress=False)
    assert set(index.retrievers) == {"bm25"}
    index.close()
    index = open_eval_index(data, tmp_path, ["dense"], progress=False)
    assert set(index.retrievers) == {"dense"}  # loads what was asked for
    index.close()
    manifest = json.loads((tmp_path / "eval-tiny" / "manifest.json").read_text())
    assert set(manifest["retrievers"]) == {"bm25", "dense"}
