from pathlib import Path

import pytest

from ragserve.corpus import ChunkingConfig, DocStore, chunk_documents, load_corpus
from ragserve.errors import InputError


@pytest.fixture
def store(tmp_path: Path, corpus_file: Path) -> DocStore:
    passages = chunk_documents(load_corpus(corpus_file), ChunkingConfig())
    DocStore.create(tmp_path / "docstore.sqlite", passages)
    return DocStore(tmp_path / "docstore.sqlite")


def test_round_trip_in_requested_order(store: DocStore) -> None:
    assert len(store) == 5
    got = store.get([3, 0, 3])
    assert [p.external_id for p in got] == ["py-gzip", "py-nonlocal", "py-gzip"]
    assert got[1].title == "nonlocal statement"
    assert [p.id for p in store.iter_passages(batch=2)] == [0, 1, 2, 3, 4]


def test_unknown_ids_are_an_input_error(store: DocStore) -> None:
    with pytest.raises(InputError, match="unknown passage ids"):
        store.get([0, 99])


def test_refuses_to_overwrite(tmp_path: Path, store: DocStore) -> None:
    with pytest.raises(InputError, match="refusing to overwrite"):
        DocStore.create(store.path, [])


def test_read_only(store: DocStore) -> None:
    with pytest.raises(Exception, match="readonly"):
        store._conn.execute("DELETE FROM passages")
