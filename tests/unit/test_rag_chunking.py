"""chunk_text: sizes, overlap, word boundaries, determinism (stable chunk ids depend on it)."""

import random

import pytest

from llm_serving.rag.chunking import chunk_text

WORDS = "the quick brown fox jumps over a lazy dog while seven wizards quietly judge boxing matches".split()


def sample_text(words: int, seed: int = 0) -> str:
    """Words of varied length, each unique (numbered), so overlaps can be measured exactly."""
    rng = random.Random(seed)
    return " ".join(f"{rng.choice(WORDS)}{i}" for i in range(words))


def test_short_text_is_one_chunk_with_whitespace_normalized():
    assert chunk_text("  Milvus   stores\n\nvectors.\t", 100, 10) == ["Milvus stores vectors."]


def test_empty_or_blank_text_has_no_chunks():
    assert chunk_text("", 100, 10) == []
    assert chunk_text(" \n\t ", 100, 10) == []


@pytest.mark.parametrize("size, overlap", [(40, 0), (40, 10), (80, 30), (200, 50), (33, 32)])
def test_chunks_respect_size_cover_every_word_and_overlap(size, overlap):
    text = sample_text(300, seed=size + overlap)
    words = text.split()
    chunks = chunk_text(text, size, overlap)
    assert len(chunks) > 1
    assert all(0 < len(chunk) <= size for chunk in chunks)
    # Every word of the text appears, in order: the chunks minus their overlaps rebuild it.
    rebuilt = chunks[0].split()
    for previous, chunk in zip(chunks, chunks[1:]):
        previous_words, chunk_words = previous.split(), chunk.split()
        shared = next(n for n in range(len(chunk_words), -1, -1) if previous_words[len(previous_words) - n:] == chunk_words[:n])
        assert shared < len(chunk_words), "every chunk must bring new words"
        if overlap:
            shared_chars = len(" ".join(chunk_words[:shared]))
            # At least the overlap, unless one more repeated word would have left no room for the
            # chunk's first new word.
            one_more = len(previous_words[-shared - 1]) + 1 + shared_chars
            assert shared_chars >= overlap or one_more + 1 + len(chunk_words[shared]) > size
        else:
            assert shared == 0
        rebuilt.extend(chunk_words[shared:])
    assert rebuilt == words


def test_chunks_break_between_words():
    text = sample_text(200, seed=3)
    vocabulary = set(text.split())
    for chunk in chunk_text(text, 50, 10):
        assert set(chunk.split()) <= vocabulary


def test_word_longer_than_a_chunk_is_cut():
    assert chunk_text("a " + "x" * 25 + " b", 10, 0) == ["a", "xxxxxxxxxx", "xxxxxxxxxx", "xxxxx b"]


def test_same_input_same_chunks():
    text = sample_text(500, seed=9)
    assert chunk_text(text, 120, 30) == chunk_text(text, 120, 30)


@pytest.mark.parametrize("size, overlap", [(0, 0), (10, 10), (10, -1)])
def test_invalid_settings_are_refused(size, overlap):
    with pytest.raises(ValueError):
        chunk_text("some text", size, overlap)
