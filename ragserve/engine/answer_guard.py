"""Stop a small base model where its answer ends: at the first sentence it repeats, or a run of
words it has written before.

Each finished sentence acts as a stop string for the rest of the answer: the sentence being
written is held back only while it could still turn out to repeat an earlier one, so a loop is
cut before any of it reaches the client and ordinary text streams with no delay. Loops with no
sentence end in them (``The method of f(x, y=1): The method of f(x, y=1): …``) are caught by
their words: the words that end the answer so far and were all written before, in that order,
are held back until the run breaks (a word or two of delay) or reaches ``NGRAM`` words, where
the answer is cut at the run's start. Runs may overlap the text they repeat, so a loop shorter
than ``NGRAM`` words is caught after ``NGRAM`` words of its second turn.
"""

from __future__ import annotations

import re

_SENTENCE_END = re.compile(r"(?<!\d)[.!?](?=\s)|\n")  # "3. " starts a list item, not a sentence
_LIST_MARK = re.compile(r"^\s*(?:\d+[.)]|[-*•])\s*")
_LIST_START = re.compile(r"\s*(?:\d+[.)]?|[-*•])?\s*")  # a list mark, perhaps still unfinished
_WORD = re.compile(r"\w+")
MIN_WORDS = 4  # shorter sentences ("Yes.", "1.") may repeat legitimately
NGRAM = 12  # a run of this many words written twice is a loop even without sentence ends


def _spans(sentence: str) -> list[tuple[int, str]]:
    """A sentence's words as compared (list number, case and punctuation ignored), each with
    where it starts."""
    mark = _LIST_MARK.match(sentence)
    return [
        (m.start(), m.group().lower()) for m in _WORD.finditer(sentence, mark.end() if mark else 0)
    ]


def _key(sentence: str) -> str:
    return " ".join(w for _, w in _spans(sentence))


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
        run, start = self._tail_run()
        if run >= NGRAM:  # a loop: what came before its run goes out, the run does not
            out.append(self._sentence[self._released : max(start, self._released)].rstrip())
            return self._stop(out)
        hold = 0 if self._may_repeat(self._sentence) else start
        hold = len(self._sentence[:hold].rstrip())  # spaces go out with the word after them
        if hold > self._released:
            out.append(self._sentence[self._released : hold])
            self._released = hold
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

    def _tail_run(self) -> tuple[int, int]:
        """The longest run of words that ends the answer so far and was written before, and
        where it starts in the sentence being written (0: in an earlier one; the sentence's
        length: no run). A last word that may go on matches as a prefix."""
        spans = _spans(self._sentence)
        words = self._words + [w for _, w in spans]
        n = len(words)
        if n < 2:
            return 0, len(self._sentence)
        last = words[-1]
        open_end = bool(spans) and spans[-1][0] + len(last) == len(self._sentence)
        best = 0
        for i in range(n - 1):  # i: where an earlier run ends
            if not (words[i].startswith(last) if open_end else words[i] == last):
                continue
            k = 1  # not capped at NGRAM: text fed in one piece may go past it
            while k <= i and words[i - k] == words[n - 1 - k]:
                k += 1
            best = max(best, k)
        if not best:
            return 0, len(self._sentence)
        own = n - best - len(self._words)  # the run's first word, counted in this sentence
        return best, spans[own][0] if own >= 0 else 0
