"""Cutting documents into overlapping chunks: a pure function, so its rules are tested directly."""

from __future__ import annotations

import re
from typing import List

_WORD = re.compile(r"\S+")


def chunk_text(text: str, chunk_size: int, chunk_overlap: int) -> List[str]:
    """Split `text` into chunks of at most `chunk_size` characters that break between words, each
    starting so that it repeats at least `chunk_overlap` characters of the previous chunk's end
    (whole words; a sentence cut at a boundary stays readable in one of the two chunks).

    Whitespace runs become single spaces. A word longer than `chunk_size` is cut into pieces.
    The result depends only on the arguments, so re-ingesting a document gives the same chunks
    (and the same chunk ids).
    """
    if chunk_size < 1:
        raise ValueError("chunk_size must be at least 1")
    if not 0 <= chunk_overlap < chunk_size:
        raise ValueError("chunk_overlap must be at least 0 and smaller than chunk_size")
    words: List[str] = []
    for word in _WORD.findall(text):
        words.extend(word[i : i + chunk_size] for i in range(0, len(word), chunk_size))
    chunks: List[str] = []
    start = 0
    while start < len(words):
        end = start
        length = -1  # no space before the first word
        while end < len(words) and length + 1 + len(words[end]) <= chunk_size:
            length += 1 + len(words[end])
            end += 1
        chunks.append(" ".join(words[start:end]))
        if end == len(words):
            break
        # Step back over whole words until the overlap is covered, always moving forward.
        next_start = end
        overlap = 0  # characters of the repeated words, spaces between them included
        while next_start - 1 > start and overlap < chunk_overlap:
            word = len(words[next_start - 1])
            candidate = word if overlap == 0 else overlap + 1 + word
            if candidate + 1 + len(words[end]) > chunk_size:
                break  # the next chunk must still have room for a new word
            overlap = candidate
            next_start -= 1
        start = next_start
    return chunks
