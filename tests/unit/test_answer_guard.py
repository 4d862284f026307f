"""The repeat guard on hand-written loops and on random and adversarial text."""

from __future__ import annotations

import random

import pytest

from ragserve.engine.answer_guard import RepeatGuard


def run(pieces: list[str]) -> tuple[str, bool]:
    guard = RepeatGuard()
    out = [guard.feed(p) for p in pieces]
    out.append(guard.flush())
    return "".join(out), guard.stopped


def tokens(text: str, seed: int = 0) -> list[str]:
    """``text`` cut into random pieces, as a model streams it."""
    rng, out, i = random.Random(seed), [], 0
    while i < len(text):
        n = rng.randint(1, 6)
        out.append(text[i : i + n])
        i += n
    return out


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("It is a data format that is used to exchange data. It is a data format that is used"
         " to exchange data. More.", "It is a data format that is used to exchange data."),
        ("Steps:\n1. Open the file in text mode.\n2. Use the open function to read it.\n3. Use"
         " the open function to read it.\n4. Use the open function",
         "Steps:\n1. Open the file in text mode.\n2. Use the open function to read it.\n"),
        ("Answer is yes. Yes. Yes. Fine.", "Answer is yes. Yes. Yes. Fine."),  # short repeats
    ],
)  # fmt: skip
def test_first_repeated_sentence_is_cut_before_it_is_emitted(text: str, expected: str) -> None:
    for seed in range(5):
        assert run(tokens(text, seed))[0] == expected


def test_a_loop_without_sentence_ends_is_cut() -> None:
    loop = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu " * 4
    out, stopped = run(tokens(loop))
    assert stopped and len(out.split()) < 3 * 12


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The method of gzip.compress(data, compresslevel=9, *, mtime=None): " * 4,
         "The method of gzip.compress(data, compresslevel=9, *, mtime=None):"),
        ("Use it so: a b c d e, a b c d e, a b c d e, a b c d e, a b c d e, a b",
         "Use it so: a b c d e,"),
        ("It reads " + "the file " * 20, "It reads the file"),
    ],
)  # fmt: skip
def test_a_loop_shorter_than_the_ngram_is_cut_where_it_starts_again(
    text: str, expected: str
) -> None:
    """No sentence end in the loop, and each turn shorter than NGRAM words: cut at the start of
    its second turn, before any of that turn is emitted."""
    for seed in range(5):
        assert run(tokens(text, seed)) == (expected, True)


def test_a_loop_inside_text_fed_at_once_is_found() -> None:
    """``eval qa`` checks whole answers: a loop in a sentence that ends within the same piece."""
    loop = "It opens " + "the file in text mode " * 4 + "and returns. Then it closes."
    assert run([loop]) == ("It opens the file in text mode", True)


def test_words_held_back_in_a_run_go_out_once_it_breaks() -> None:
    """A run of words written before is held back only while it lasts."""
    guard = RepeatGuard()
    assert guard.feed("Open the file in text mode and read the file ") == (
        "Open the file in text mode and read"
    )
    assert guard.feed("twice, and") == " the file twice,"  # a word goes out once it ends
    assert guard.flush() == " and" and not guard.stopped


def test_ordinary_text_streams_unchanged() -> None:
    text = "The nonlocal statement rebinds names. It refers to the enclosing scope.\nDone"
    out, stopped = run(tokens(text))
    assert out == text and not stopped


@pytest.mark.parametrize("seed", range(200))
def test_random_and_adversarial_text_never_breaks_it(seed: int) -> None:
    rng = random.Random(seed)
    alphabet = ["a", "b", " ", ".", "\n", "1.", "- ", "Answer:", "?", "é", "\u200b", "!", "word"]
    text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 10_000 if seed < 3 else 300)))
    out, stopped = run(tokens(text, seed))
    text = text.lstrip()  # an answer starts at its first visible character
    assert text.startswith(out)  # only ever a prefix of what the model wrote
    if not stopped:
        assert out == text
