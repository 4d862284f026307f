from pathlib import Path

import pytest

from ragserve.corpus.loaders import load_corpus
from ragserve.errors import InputError, NotFoundError
from tests.conftest import CORPUS, write_jsonl


def test_jsonl_round_trip(corpus_file: Path) -> None:
    docs = list(load_corpus(corpus_file))
    assert [d.id for d in docs] == [r["id"] for r in CORPUS]
    assert docs[0].title == "nonlocal statement"


def test_beir_folder_with_underscore_ids(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "corpus.jsonl", [{"_id": 7, "title": "", "text": "seven"}])
    (doc,) = load_corpus(tmp_path)
    assert (doc.id, doc.title, doc.text) == ("7", "", "seven")


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (['{"id": "a", "text": "x"}', "{not json"], ":2: invalid JSON"),
        (
            ['{"id": "a", "text": "x"}', '{"id": "a", "text": "y"}'],
            ":2: duplicate id 'a' (first seen on line 1)",
        ),
        (['{"id": "a", "text": "   "}'], ":1: empty or missing 'text' for id 'a'"),
        (['{"title": "t", "text": "x"}'], ":1: missing 'id'"),
        (["[1, 2]"], ":1: expected a JSON object"),
    ],
)
def test_malformed_lines_name_file_and_line(tmp_path: Path, lines: list[str], message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError) as err:
        list(load_corpus(path))
    assert str(path) in err.value.message
    assert message in err.value.message


def test_missing_and_empty_files(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="corpus file not found"):
        list(load_corpus(tmp_path / "nope.jsonl"))
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(InputError, match="no documents"):
        list(load_corpus(tmp_path / "empty.jsonl"))


def test_json_error_points_at_the_column_on_its_line(tmp_path: Path) -> None:
    line = '{"id": "a", "title": "t", "text": "a line that lacks its closing brace"'
    (tmp_path / "c.jsonl").write_text(line + "\n")
    with pytest.raises(InputError, match=rf":1: invalid JSON \(.* at column {len(line) + 1}\)"):
        list(load_corpus(tmp_path / "c.jsonl"))
