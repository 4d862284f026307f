"""Stop a small base model where its answer ends: at the first sentence it repeats, or a run of
words it has written before.

Each finished sentence acts as a stop string for the rest of the answer: the sentence being
written is held back only while it could still turn out to repeat an earlier one, so a loop is
cut before any of it reaches the client and ordinary text streams a word behind. Loops with no
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


def _key(sentence: str) -> str:
    """A sentence compared by its words: list number, case and punctuation ignored (each word
    lowered as ``RepeatGuard._read`` lowers it)."""
    mark = _LIST_MARK.match(sentence)
    return " ".join(m.group().lower() for m in _WORD.finditer(sentence, mark.end() if mark else 0))


class RepeatGuard:
    """Feed answer text as it streams; get back what is safe to emit. ``stopped`` turns true at
    the first repeat, which is never emitted. The answer starts at its first visible character
    (leading whitespace is dropped); ``emitted`` turns true once some text has been let out.

    Words are read once, as they end (a word still being written is held back with whatever
    follows it), and indexed by where they occur, so a feed costs about the same at the end of a
    long answer as at its start.
    """

    def __init__(self) -> None:
        self.emitted = False
        self.stopped = False
        self._seen: set[str] = set()  # keys of finished sentences of MIN_WORDS or more
        self._longest = 0  # words in the longest of them
        self._sentence = ""  # the sentence being written
        self._released = 0  # how much of it has been emitted
        self._words: list[str] = []  # every finished word of the answer, as compared
        self._at: dict[str, list[int]] = {}  # word -> its indices in _words
        self._first = 0  # index in _words of the sentence's first word
        self._starts: list[int] = []  # where the sentence's finished words start in it
        self._scan = 0  # where to look for the sentence's next word
        self._open = -1  # where a word still being written starts, or -1
        self._run: tuple[int, int | None] = (0, None)  # ``_tail_run`` at the last finished word

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
        # An end needs the character after it: look again from the last one of the text before.
        since = max(len(self._sentence) - 1, 0)
        self._sentence += text
        out = []
        while m := _SENTENCE_END.search(self._sentence, since):
            since = 0
            done, rest = self._sentence[: m.end()], self._sentence[m.end() :]
            if self._repeats(done):
                return self._stop(out)
            self._read(done, final=True)
            run, start = self._run
            if run >= NGRAM:  # text fed in one piece (a whole answer, say): a loop inside it
                out.append(done[self._released : max(start or 0, self._released)].rstrip())
                return self._stop(out)
            out.append(done[self._released :])
            self._remember(done)
            self._sentence, self._released = rest, 0
            self._first, self._starts, self._scan, self._open = len(self._words), [], 0, -1
        self._read(self._sentence, final=False)
        run, start = self._run
        if run >= NGRAM:  # a loop: what came before its run goes out, the run does not
            out.append(self._sentence[self._released : max(start or 0, self._released)].rstrip())
            return self._stop(out)
        hold = len(self._sentence) if start is None else start
        if self._open >= 0:
            hold = min(hold, self._open)
        if self._may_repeat():
            hold = 0
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

    def _read(self, sentence: str, final: bool) -> None:
        """Take in the words of ``sentence`` that have ended since the last read (with
        ``final``, all of them: the sentence has ended)."""
        if not self._starts:  # a list mark is known only once a word follows it
            mark = _LIST_MARK.match(sentence)
            self._scan = mark.end() if mark else 0
        self._open = -1
        added = False
        for m in _WORD.finditer(sentence, self._scan):
            if m.end() == len(sentence) and not final:
                self._open = m.start()
                break
            word = m.group().lower()
            self._at.setdefault(word, []).append(len(self._words))
            self._words.append(word)
            self._starts.append(m.start())
            self._scan = m.end()
            added = True
            self._run = self._tail_run()  # after each word: several may come in one piece
            if self._run[0] >= NGRAM:
                return
        if not added and not self._starts and self._run[0]:
            self._run = (self._run[0], 0)  # a run from earlier sentences holds all of this one

    def _repeats(self, sentence: str) -> bool:
        key = _key(sentence)
        return len(key.split()) >= MIN_WORDS and key in self._seen

    def _may_repeat(self) -> bool:
        """Whether the sentence so far could still turn out to repeat a finished one."""
        partial = self._sentence
        if _LIST_START.fullmatch(partial):  # nothing but a list mark yet: what follows decides
            return bool(partial) and bool(self._seen)
        if not self._seen or len(self._starts) > self._longest:
            return False
        key = _key(partial)
        return bool(key) and any(s.startswith(key) for s in self._seen)

    def _remember(self, sentence: str) -> None:
        key = _key(sentence)
        n = len(key.split())
        if n >= MIN_WORDS:
            self._seen.add(key)
            self._longest = max(self._longest, n)

    def _tail_run(self) -> tuple[int, int | None]:
        """The longest run of words that ends the finished words and was written before (it
        may overlap what it repeats), and where it starts in the sentence being written (0: in
        an earlier one; None: no run)."""
        words = self._words
        n = len(words)
        best = 0
        for i in self._at[words[-1]]:  # i: where an earlier run ends
            if i == n - 1:
                break
            k = 1  # not capped at NGRAM: text fed in one piece may go past it
            while k <= i and words[i - k] == words[n - 1 - k]:
                k += 1
            best = max(best, k)
        if not best:
            return 0, None
        own = n - best - self._first  # the run's first word, counted in this sentence
        return best, self._starts[own] if own >= 0 else 0
