"""Chat formatting shared by backends: the model's own Jinja template, or a plain transcript.

The bundled Gemma 3 270M is a base model and its GGUF has no template; asked in Gemma's turn
format it mostly repeats the question, while a transcript ending in "Answer:" gets it to answer.
"""

from __future__ import annotations

from collections.abc import Sequence


def plain_transcript(messages: Sequence[dict[str, str]]) -> str:
    """System text, then turns separated by blank lines, assistant turns as ``Answer: ...``."""
    parts = []
    for m in messages:
        content = m["content"].strip()
        parts.append(f"Answer: {content}" if m["role"] == "assistant" else content)
    return "\n\n".join(parts) + "\nAnswer:"


def render_jinja(template: str, messages: Sequence[dict[str, str]]) -> str:
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(template).render(
        messages=list(messages), add_generation_prompt=True, bos_token="<bos>", eos_token="<eos>"
    )
