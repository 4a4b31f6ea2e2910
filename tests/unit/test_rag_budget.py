"""Fitting retrieved sources into the model's window: the pure budgeting over token counts and scores."""

import pytest

from llm_serving.rag.budget import (
    MAX_GENERATION_RESERVE_TOKENS,
    does_not_fit_message,
    fit_sources,
    generation_reserve,
    request_fits,
    sources_budget,
)
from llm_serving.rag.context import requested_max_tokens


def test_the_request_max_tokens_is_the_reserve():
    assert generation_reserve(512, 16) == 16
    assert generation_reserve(8192, 0) == 0


@pytest.mark.parametrize(
    ("max_model_len", "reserve"),
    [(512, 128), (2048, 512), (4096, MAX_GENERATION_RESERVE_TOKENS), (131072, MAX_GENERATION_RESERVE_TOKENS)],
)
def test_without_max_tokens_a_quarter_of_the_window_is_kept_for_generation(max_model_len, reserve):
    assert generation_reserve(max_model_len, None) == reserve


def test_budget_is_the_window_less_prompt_and_generation():
    assert sources_budget(512, 160, 16) == 512 - 160 - 16
    assert sources_budget(512, 160, None) == 512 - 160 - 128
    assert sources_budget(512, 500, 16) == 0  # never negative


def test_sources_that_all_fit_are_all_kept_best_first():
    assert fit_sources([100, 100, 100], [0.9, 0.8, 0.7], 300) == [0, 1, 2]
    assert fit_sources([10, 10, 10], [0.5, 0.9, 0.7], 1000) == [1, 2, 0]


def test_lowest_scored_sources_are_dropped_first():
    assert fit_sources([100, 100, 100, 100], [0.9, 0.8, 0.7, 0.6], 250) == [0, 1]
    # Retrieval order does not matter: scores decide what goes.
    assert fit_sources([100, 100, 100, 100], [0.6, 0.7, 0.9, 0.8], 250) == [2, 3]


def test_budget_boundary_is_inclusive():
    assert fit_sources([100, 50], [0.9, 0.8], 150) == [0, 1]
    assert fit_sources([100, 50], [0.9, 0.8], 149) == [0]


def test_a_shorter_lower_scored_source_never_displaces_a_better_one():
    # The second-best does not fit; the third would, but everything below the first drop goes.
    assert fit_sources([100, 300, 20], [0.9, 0.8, 0.7], 200) == [0]


def test_nothing_fits_when_the_best_source_is_too_long():
    assert fit_sources([300, 10], [0.9, 0.8], 200) == []
    assert fit_sources([10, 10], [0.9, 0.8], 0) == []
    assert fit_sources([], [], 100) == []


def test_equal_scores_keep_retrieval_order():
    assert fit_sources([50, 50, 50], [0.5, 0.5, 0.5], 100) == [0, 1]


def test_counts_and_scores_must_match():
    with pytest.raises(ValueError, match="2 token counts for 3 scores"):
        fit_sources([1, 2], [0.3, 0.2, 0.1], 100)


@pytest.mark.parametrize(
    ("prompt_tokens", "max_tokens", "fits"),
    [(496, 16, True), (497, 16, False), (511, None, True), (512, None, False), (511, 0, True), (512, 0, False)],
)
def test_a_request_fits_when_its_prompt_and_max_tokens_fit(prompt_tokens, max_tokens, fits):
    assert request_fits(512, prompt_tokens, max_tokens) is fits


def test_refusal_names_the_window_the_prompt_and_max_tokens():
    message = does_not_fit_message("tiny-chat", 512, 480, 64)
    assert "does not fit `tiny-chat`'s context window even without any retrieved text" in message
    assert "480 prompt tokens" in message and "max_tokens is 64" in message and "max_model_len 512" in message
    assert "Shorten the messages or lower max_tokens" in message
    assert "at least 1 token must be generated" in does_not_fit_message("tiny-chat", 512, 512, None)


@pytest.mark.parametrize(
    ("payload", "max_tokens"),
    [
        ({}, None),
        ({"max_tokens": 32}, 32),
        ({"max_completion_tokens": 8, "max_tokens": 32}, 8),  # vLLM reads max_completion_tokens first
        ({"max_tokens": None}, None),
        ({"max_tokens": "32"}, None),  # not an integer: the engine refuses the request itself
        ({"max_tokens": True}, None),
    ],
)
def test_requested_max_tokens(payload, max_tokens):
    assert requested_max_tokens(payload) == max_tokens
