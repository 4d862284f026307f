"""The RAG prompt: numbered passages, then the question, in the model's own chat format."""

from __future__ import annotations

from collections.abc import Sequence

from ragserve.engine.events import Citation

SYSTEM = (
    "Answer the question using the numbered passages. Cite the passages you use as [1], [2]. "
    "If the passages do not contain the answer, say that you do not know."
)


# A base model keeps writing passages, questions or new answers after its answer; stop it there.
STOP = ("\n\n[", "Question:", "Answer:", "\n\n\n")

# Said instead of an empty answer, per strategy.
NO_ANSWER = {
    "single": "The passages do not say.",
    "none": "I do not know.",
    "auto_rag": "The documents do not say.",
    "ralm": "The passages do not say.",
}


def passage_blocks(citations: Sequence[Citation], max_words: int = 150) -> str:
    """The numbered passages, each cut to ``max_words`` words."""
    blocks = []
    for c in citations:
        words = c.text.split()
        text = " ".join(words[:max_words]) + (" …" if len(words) > max_words else "")
        blocks.append(f"[{c.index}] {c.title}\n{text}" if c.title else f"[{c.index}] {text}")
    return "\n\n".join(blocks)


def rag_text(prompt: str, citations: Sequence[Citation]) -> str:
    """A text prompt (``/v1/completions``) continued over the passages: they go before it."""
    if not citations:
        return prompt
    return f"Passages:\n{passage_blocks(citations)}\n\n{prompt}"


def rag_messages(
    messages: Sequence[dict[str, str]], citations: Sequence[Citation], max_words: int = 150
) -> list[dict[str, str]]:
    """``messages`` with our system text added and the last user turn carrying the passages."""
    passages = passage_blocks(citations, max_words)
    last_user = max(i for i, m in enumerate(messages) if m["role"] == "user")
    out = [{"role": "system", "content": SYSTEM}]
    for i, m in enumerate(messages):
        if i == last_user:
            out.append(
                {
                    "role": "user",
                    "content": f"Passages:\n{passages}\n\nQuestion: {m['content'].strip()}",
                }
            )
        else:
            out.append(dict(m))
    return out
