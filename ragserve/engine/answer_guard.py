"""Stop a small base model where its answer ends: at the first sentence it repeats, or a run of
words it has written before.

Each finished sentence acts as a stop string for the rest of the answer: the sentence being
written is held back only while it could still turn out to repeat an earlier one, so a loop is
cut before any of it reaches the client and ordinary text streams with no delay.
"""

from __future__ import annotations

import re

_SENTENCE_END = re.compile(r"(?<!\d)[.!?](?=\s)|\n")  # "3. " starts a list item, not a sentence
_LIST_MARK = re.compile(r"^\s*(?:\d+[.)]|[-*•])\s*")
_LIST_START = re.compile(r"\s*(?:\d+[.)]?|[-*•])?\s*")  # a list mark, perhaps still unfinished
_WORD = re.compile(r"\w+")
MIN_WORDS = 4  # shorter sentences ("Yes.", "1.") may repeat legitimately
NGRAM = 12  # a run of this many words written twice is a loop even without sentence ends


def _key(sentence: str) -> str:
    """A sentence compared by its words: list numbers, case and punctuation ignored."""
    return " ".join(_WORD.findall(_LIST_MARK.sub("", sentence).lower()))


class RepeatGuard:
    """Feed answer text as it streams; get back what is safe to emit. ``stopped`` turns true at
    the first repeat, which is never emitted. The answer starts at its first visible character
    (leading whitespace is dropped); ``emitted`` turns true once some text has been let out."""

    def __init__(self) -> None:
        self.emitted = False
        self._seen: list[str] = []
        self._sentence = ""  # the sentence being written
        self._released = 0  # how much of it has been emitted
        self._words: list[str] = []  # the words of finished sentences
        self.stopped = False

    def feed(self, text: str) -> str:
        return self._out(self._feed(text))

    def flush(self) -> str:
        """What is left at the end of generation (dropped if it repeats)."""
        return self._out(self._flush())

    def _out(self, text: str) -> str:
        if not self.emitted:
            text = text.lstrip()
            self.emitted = bool(text)
        return text

    def _feed(self, text: str) -> str:
        if self.stopped:
            return ""
        self._sentence += text
        out = []
        while m := _SENTENCE_END.search(self._sentence):
            done, self._sentence = self._sentence[: m.end()], self._sentence[m.end() :]
            if self._repeats(done):
                return self._stop(out)
            out.append(done[self._released :])
            self._released = 0
            self._remember(done)
        if self._loops():
            return self._stop(out)
        if not self._may_repeat(self._sentence):
            out.append(self._sentence[self._released :])
            self._released = len(self._sentence)
        return "".join(out)

    def _flush(self) -> str:
        if self.stopped or self._repeats(self._sentence):
            return ""
        rest = self._sentence[self._released :]
        self._sentence, self._released = "", 0
        return rest

    def _stop(self, out: list[str]) -> str:
        self.stopped = True
        return "".join(out)

    def _repeats(self, sentence: str) -> bool:
        key = _key(sentence)
        return len(key.split()) >= MIN_WORDS and key in self._seen

    def _may_repeat(self, partial: str) -> bool:
        if _LIST_START.fullmatch(partial):  # nothing but a list mark yet: what follows decides
            return bool(partial) and bool(self._seen)
        key = _key(partial)
        return bool(key) and any(s.startswith(key) for s in self._seen)

    def _remember(self, sentence: str) -> None:
        key = _key(sentence)
        if len(key.split()) >= MIN_WORDS:
            self._seen.append(key)
        self._words += key.split()

    def _loops(self) -> bool:
        words = self._words + _key(self._sentence).split()
        if len(words) < 2 * NGRAM:
            return False
        tail = words[-NGRAM:]
        return any(words[i : i + NGRAM] == tail for i in range(len(words) - 2 * NGRAM + 1))
