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


def format_sources(texts: Sequence[str], max_chars: int) -> Tuple[str, int]:
    """Numbered sources `[1] text` in rank order, at most `max_chars` characters in all, and how
    many made it in: whole sources only, except that the first is truncated rather than dropped."""
    formatted = ""
    used = 0
    for number, text in enumerate(texts, start=1):
        line = f"[{number}] {text}"
        candidate = f"{formatted}\n{line}" if formatted else line
        if len(candidate) > max_chars:
            if not formatted:
                formatted, used = line[:max_chars], 1
            break
        formatted, used = candidate, number
    return formatted, used


def build_rag_messages(
    messages: Sequence[Dict[str, Any]],
    texts: Sequence[str],
    instructions: str = DEFAULT_RAG_INSTRUCTIONS,
    max_context_chars: int = 6000,
) -> Tuple[List[Dict[str, Any]], int]:
    """The conversation with the retrieved sources in a system message at its start, and how many
    of the sources fit in `max_context_chars` (the citations name exactly those).

    An existing leading system message is kept and the sources are appended to it (chat templates
    of many models accept only one system message, first); the other messages are unchanged.
    """
    sources, used = format_sources(texts, max_context_chars)
    context = f"{instructions}\n\nSources:\n{sources}"
    rest = list(messages)
    if rest and isinstance(rest[0], dict) and rest[0].get("role") == "system":
        first = rest.pop(0)
        own = message_text(first.get("content"))
        context = f"{own}\n\n{context}" if own else context
    return [{"role": "system", "content": context}, *rest], used
