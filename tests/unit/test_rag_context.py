"""fit_context's steps (count, refuse, keep the best sources, re-count the joined prompt), counted with
tiny-chat's own Hugging Face tokenizer and chat template: the files and the rendering vLLM uses
inside the engine (the e2e tests count with the engine itself, tests/e2e/test_rag.py)."""

import asyncio

import pytest
from transformers import AutoTokenizer

from llm_serving.builtin_models import tiny_chat_path
from llm_serving.gateway.errors import GatewayError
from llm_serving.rag.budget import generation_reserve
from llm_serving.rag.context import fit_context
from llm_serving.rag.prompt import numbered_sources, rag_messages

INSTRUCTIONS = "Answer from the numbered sources."
QUESTION = [{"role": "user", "content": "How do honeybees tell each other where the flowers are?"}]
NOTES = [
    "Forager honeybees dance on the comb: the angle of the straight run gives the direction of the flowers.",
    "When flowers are near the hive, honeybees do a round dance that says food is close but not which way.",
    "Hive mates smell the nectar the dancer brought back, then look for flowers with that same scent.",
    "Honeybees navigate with the sun as a compass and use polarised light on cloudy days.",
]


class TokenizerCounter:
    """Counts as the engine does: the chat template rendered, then encoded without extra special tokens."""

    def __init__(self, max_model_len: int):
        self.tokenizer = AutoTokenizer.from_pretrained(tiny_chat_path())
        self.max_model_len = max_model_len
        self.chat_counts = 0

    def _encode(self, text):
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    async def count_chat(self, model, payload, messages):
        self.chat_counts += 1
        prompt = self.tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=False)
        return self._encode(prompt), self.max_model_len

    async def count_text(self, model, text):
        return self._encode(text)


def hits(scores=(0.9, 0.8, 0.7, 0.6)):
    return [{"id": f"note#{n}", "text": text, "score": score} for n, (text, score) in enumerate(zip(NOTES, scores))]


def fit(counter, payload, messages=QUESTION, retrieved=None):
    retrieved = hits() if retrieved is None else retrieved
    return asyncio.run(fit_context(counter, "tiny-chat", payload, messages, retrieved, INSTRUCTIONS, 6000))


def prompt_tokens(counter, positions, messages=QUESTION):
    built = rag_messages(messages, numbered_sources([NOTES[p] for p in positions]), INSTRUCTIONS)
    return asyncio.run(counter.count_chat("tiny-chat", {}, built))[0]


@pytest.fixture(scope="module")
def whole_prompt_tokens():
    return prompt_tokens(TokenizerCounter(4096), range(len(NOTES)))


def test_when_everything_fits_all_sources_go_in_after_one_count(whole_prompt_tokens):
    counter = TokenizerCounter(whole_prompt_tokens + 16)
    fitted = fit(counter, {"max_tokens": 16})
    assert fitted.used == [0, 1, 2, 3] and counter.chat_counts == 1
    assert fitted.messages == rag_messages(QUESTION, numbered_sources(NOTES), INSTRUCTIONS)


@pytest.mark.parametrize("max_tokens", [16, 64, None])
def test_the_best_sources_that_fit_are_kept_and_the_next_would_not(whole_prompt_tokens, max_tokens):
    window = whole_prompt_tokens  # every note in and any room for generation: never fits
    counter = TokenizerCounter(window)
    fitted = fit(counter, {} if max_tokens is None else {"max_tokens": max_tokens})
    kept = len(fitted.used)
    assert fitted.used == list(range(kept)) and 0 < kept < len(NOTES)
    reserve = generation_reserve(window, max_tokens)
    assert prompt_tokens(counter, fitted.used) + reserve <= window
    assert prompt_tokens(counter, range(kept + 1)) + reserve > window


def test_the_lowest_scored_go_first_whatever_the_retrieval_order(whole_prompt_tokens):
    counter = TokenizerCounter(whole_prompt_tokens)
    fitted = fit(counter, {"max_tokens": 64}, retrieved=hits(scores=(0.6, 0.9, 0.7, 0.8)))
    assert fitted.used == [1, 3, 2, 0][: len(fitted.used)] and 0 < len(fitted.used) < len(NOTES)


def test_a_request_that_fits_only_without_sources_goes_unchanged():
    counter = TokenizerCounter(4096)
    own = asyncio.run(counter.count_chat("tiny-chat", {}, QUESTION))[0]
    counter.max_model_len = own + 8
    fitted = fit(counter, {"max_tokens": 8})
    assert fitted.used == [] and fitted.messages == QUESTION


def test_a_request_that_cannot_fit_without_sources_is_refused_with_the_numbers():
    counter = TokenizerCounter(4096)
    own = asyncio.run(counter.count_chat("tiny-chat", {}, QUESTION))[0]
    counter.max_model_len = own + 8
    with pytest.raises(GatewayError) as refused:
        fit(counter, {"max_tokens": 9})
    error = refused.value
    assert (error.status, error.code, error.param) == (400, "context_length_exceeded", "messages")
    assert f"{own} prompt tokens" in error.message and "max_tokens is 9" in error.message
    assert f"max_model_len {own + 8}" in error.message and "even without any retrieved text" in error.message


def test_template_fields_the_chat_would_refuse_get_a_400_not_a_500():
    from llm_serving.rag.context import EngineTokenCounter

    counter = EngineTokenCounter({})  # refused while building the request: no engine is asked
    payload = {"continue_final_message": True, "add_generation_prompt": True}  # vLLM refuses both
    with pytest.raises(GatewayError) as refused:
        asyncio.run(counter.count_chat("tiny-chat", payload, QUESTION))
    assert (refused.value.status, refused.value.code, refused.value.param) == (400, "invalid_request", "messages")
    assert "continue_final_message" in refused.value.message, refused.value.message
