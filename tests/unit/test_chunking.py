import pytest

from ragserve.corpus import ChunkingConfig, Document, chunk_documents
from ragserve.corpus.chunking import split_words
from ragserve.errors import InputError


def words(n: int) -> str:
    return " ".join(f"w{i}" for i in range(n))


def test_short_document_is_one_passage_keeping_its_id() -> None:
    (p,) = chunk_documents([Document("d", "T", words(50))], ChunkingConfig(100, 20))
    assert (p.id, p.external_id, p.doc_id, p.title) == (0, "d", "d", "T")


def test_windows_overlap_and_cover_everything() -> None:
    chunks = split_words(words(250), ChunkingConfig(100, 20))
    assert [len(c.split()) for c in chunks] == [100, 100, 90]
    assert chunks[0].split()[-20:] == chunks[1].split()[:20]
    assert chunks[-1].split()[-1] == "w249"


def test_short_tail_is_merged_not_left_dangling() -> None:
    chunks = split_words(words(110), ChunkingConfig(100, 20))
    assert len(chunks) == 1 and len(chunks[0].split()) == 110


def test_passage_ids_are_dense_across_documents() -> None:
    docs = [Document("a", "", words(250)), Document("b", "", words(10))]
    ps = list(chunk_documents(docs, ChunkingConfig(100, 20)))
    assert [p.id for p in ps] == [0, 1, 2, 3]
    assert [p.external_id for p in ps] == ["a#0", "a#1", "a#2", "b"]


def test_zero_keeps_documents_whole() -> None:
    assert len(split_words(words(1000), ChunkingConfig(0, 0))) == 1


def test_overlap_must_be_smaller_than_size() -> None:
    with pytest.raises(InputError, match="overlap"):
        ChunkingConfig(10, 10)
