"""``ralm`` streams verified text: what it sends of an unfinished answer must be a prefix of the
finished one, however many steps each verification brings (one in the plain loop, several when
speculating), or the two modes would send different answers."""

from __future__ import annotations

import pytest

from ragserve.engine.ralm import _stop_at, settled


def finished(text: str, stop: tuple[str, ...]) -> str:
    cut = _stop_at(text, stop)
    return text if cut is None else text[:cut]


@pytest.mark.parametrize(
    ("full", "stop"),
    [
        ("Paris is the capital.\n\nQuestion: what", ()),
        ("It is 42.\n\n\nmore", ()),
        ("Use json.loads.\n\n[1] docs", ()),
        ("A caf\u00e9 menu. END here", ("END",)),
        ("No stop string at all, only text", ()),
        ("Answer: at once", ()),
    ],
)
def test_settled_text_is_a_prefix_of_the_answer_at_every_cut(
    full: str, stop: tuple[str, ...]
) -> None:
    answer = finished(full, stop)
    end = _stop_at(full, stop)
    for i in range(len(full) + 1):
        if (cut := _stop_at(full[:i], stop)) is not None:
            assert cut == end  # from here on the answer is finished
            break
        sent = settled(full[:i], stop)
        assert answer.startswith(sent), (i, sent)


def test_a_character_still_being_written_is_held_back() -> None:
    assert settled("caf\ufffd") == "caf"
    assert settled("one\n") == "one"  # "\n\n[" may follow
    assert settled("one\nQuest") == "one\n"
