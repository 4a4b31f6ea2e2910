"""Building the retrieval-augmented prompt: pure functions, tested directly."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

from llm_serving.config import DEFAULT_RAG_INSTRUCTIONS


def message_text(content: Any) -> str:
    """The text of an OpenAI message `content`: a string, or a list of parts of which the text ones count."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            part.get("text", "") for part in content if isinstance(part, dict) and part.get("type") == "text"
        )
    return ""


def retrieval_query(messages: Sequence[Dict[str, Any]]) -> Optional[str]:
    """What to search for: the text of the last user message (None when there is no user text)."""
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            text = message_text(message.get("content")).strip()
            return text or None
    return None


def capped_sources(texts: Sequence[str], max_chars: int) -> List[str]:
    """The source texts, in rank order, whose numbered lines (see numbered_sources) fit in
    `max_chars` characters in all: whole sources only, except that the first is truncated rather
    than dropped."""
    kept: List[str] = []
    length = 0
    for number, text in enumerate(texts, start=1):
        prefix = f"[{number}] "
        added = len(prefix) + len(text) + (1 if kept else 0)  # and the newline before it
        if length + added > max_chars:
            if not kept:
                kept.append(text[: max(max_chars - len(prefix), 0)])
            break
        kept.append(text)
        length += added
    return kept


def numbered_sources(texts: Sequence[str]) -> List[str]:
    """`[1] text`, `[2] text`, ...: the lines of the sources block, numbered as cited."""
    return [f"[{number}] {text}" for number, text in enumerate(texts, start=1)]


def source_lines(texts: Sequence[str], max_chars: int) -> List[str]:
    """The numbered lines of the sources that fit in `max_chars` (see capped_sources)."""
    return numbered_sources(capped_sources(texts, max_chars))


def format_sources(texts: Sequence[str], max_chars: int) -> Tuple[str, int]:
    """The numbered sources as one block (see source_lines), and how many made it in."""
    lines = source_lines(texts, max_chars)
    return "\n".join(lines), len(lines)


def rag_messages(
    messages: Sequence[Dict[str, Any]], lines: Sequence[str], instructions: str = DEFAULT_RAG_INSTRUCTIONS
) -> List[Dict[str, Any]]:
    """The conversation with the numbered source `lines` in a system message at its start.

    An existing leading system message is kept and the sources are appended to it (chat templates
    of many models accept only one system message, first); the other messages are unchanged.
    """
    context = f"{instructions}\n\nSources:\n" + "\n".join(lines)
    rest = list(messages)
    if rest and isinstance(rest[0], dict) and rest[0].get("role") == "system":
        first = rest.pop(0)
        own = message_text(first.get("content"))
        context = f"{own}\n\n{context}" if own else context
    return [{"role": "system", "content": context}, *rest]


def build_rag_messages(
    messages: Sequence[Dict[str, Any]],
    texts: Sequence[str],
    instructions: str = DEFAULT_RAG_INSTRUCTIONS,
    max_context_chars: int = 6000,
) -> Tuple[List[Dict[str, Any]], int]:
    """The conversation with the retrieved sources that fit in `max_context_chars`, and how many
    fit (the citations name exactly those). Token budgeting is rag/context.py's, on top of this."""
    lines = source_lines(texts, max_context_chars)
    return rag_messages(messages, lines, instructions), len(lines)
