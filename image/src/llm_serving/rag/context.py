"""Retrieved context fitted to the chat model's context window, in tokens counted by the model's engine.

Tokens are counted by the chat model's own engine replica (Ray Serve LLM's LLMServer.tokenize, vLLM's
tokenize endpoint), not by a tokenizer loaded in the gateway:
- it renders the messages with the same tokenizer, chat template and template arguments (tools,
  chat_template_kwargs) that the chat completion will use, so the count is the prompt's exact size;
- it reports the window the engine really runs with (`max_model_len`), whatever the config says;
- the gateway needs neither the model's files nor a hub token on its node (on KubeRay it can run
  on the head, which has no HF_TOKEN), and keeps no second copy of any tokenizer in memory.
The cost is a few small requests to the engine, and only when the whole prompt does not fit at
the first count (see fit_context).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Protocol, Sequence, Tuple

from llm_serving.gateway.errors import GatewayError
from llm_serving.rag.budget import (
    does_not_fit_message,
    fit_sources,
    generation_reserve,
    request_fits,
    sources_budget,
)
from llm_serving.rag.prompt import capped_sources, numbered_sources, rag_messages

# Chat request fields that change how the engine renders the prompt; the count passes them on.
TEMPLATE_FIELDS = (
    "add_generation_prompt",
    "continue_final_message",
    "add_special_tokens",
    "chat_template",
    "chat_template_kwargs",
    "tools",
    "mm_processor_kwargs",
    "media_io_kwargs",
)


def requested_max_tokens(payload: Mapping[str, Any]) -> Optional[int]:
    """The request's limit on generated tokens, as vLLM reads it (max_completion_tokens first);
    None when unset or not an integer (the engine then refuses the request itself)."""
    for field in ("max_completion_tokens", "max_tokens"):
        value = payload.get(field)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


class TokenCounter(Protocol):
    async def count_chat(
        self, model: str, payload: Mapping[str, Any], messages: Sequence[Dict[str, Any]]
    ) -> Tuple[int, int]: ...

    async def count_text(self, model: str, text: str) -> int: ...


class EngineTokenCounter:
    """Counts tokens with each chat model's own engine, through the gateway's deployment handles."""

    def __init__(self, handles: Mapping[str, Any]):
        self._handles = {model: handle.options(stream=True) for model, handle in handles.items()}

    def knows(self, model: str) -> bool:
        return model in self._handles

    async def count_chat(
        self, model: str, payload: Mapping[str, Any], messages: Sequence[Dict[str, Any]]
    ) -> Tuple[int, int]:
        """(prompt tokens, max_model_len) of `messages` rendered as `payload`'s chat would be."""
        from llm_serving._ray import TokenizeChatRequest

        fields = {field: payload[field] for field in TEMPLATE_FIELDS if field in payload}
        # Any failure here is pydantic's or vLLM's validation of the caller's fields (the chat would
        # refuse them too): a 400, not a 500.
        try:
            request = TokenizeChatRequest(model=model, messages=list(messages), **fields)
        except Exception as error:
            raise GatewayError(
                400, f"Invalid chat request: {_first_line(error)}", code="invalid_request", param="messages"
            ) from None
        response = await self._tokenize(model, request)
        return response.count, response.max_model_len

    async def count_text(self, model: str, text: str) -> int:
        """Tokens of `text` on its own (no special tokens): a piece of the prompt."""
        from llm_serving._ray import TokenizeCompletionRequest

        request = TokenizeCompletionRequest(model=model, prompt=text, add_special_tokens=False)
        return (await self._tokenize(model, request)).count

    async def _tokenize(self, model: str, request: Any) -> Any:
        from llm_serving._ray import ErrorResponse

        async for response in self._handles[model].tokenize.remote(request, None):
            if isinstance(response, list):
                response = response[0]
            if isinstance(response, ErrorResponse):
                status = response.error.code if 400 <= response.error.code < 500 else 502
                raise GatewayError(
                    status,
                    f"`{model}` could not count the prompt's tokens: {response.error.message}",
                    code="invalid_request" if status < 500 else "tokenize_failed",
                    param="messages" if status < 500 else None,
                )
            return response
        raise GatewayError(502, f"`{model}` returned nothing when asked to count tokens.", code="tokenize_failed")


def _first_line(error: Exception) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return " ".join(lines[:3])


@dataclass(frozen=True)
class FittedContext:
    messages: List[Dict[str, Any]]  # what the engine gets
    used: List[int]  # positions in the retrieved hits of the sources in the prompt, as numbered there


async def fit_context(
    counter: TokenCounter,
    model: str,
    payload: Mapping[str, Any],
    messages: Sequence[Dict[str, Any]],
    hits: Sequence[Dict[str, Any]],
    instructions: str,
    max_context_chars: int,
) -> FittedContext:
    """The messages with as many retrieved sources as fit the model's window, best-scored first.

    1. Count the prompt with every source (within max_context_chars): if it leaves room for
       generation, that is the prompt (one count).
    2. Otherwise count the request's own messages, the prompt with no sources, and each source line;
       refuse (400) a request that does not fit even without retrieved text; keep the best-scored
       sources that fit the budget (rag.budget).
    3. Count the result exactly (tokens can merge where pieces join) and drop the lowest-scored kept
       source until it fits. With no source left, the request's own messages go unchanged.
    """
    texts = capped_sources([hit["text"] for hit in hits], max_context_chars)
    max_tokens = requested_max_tokens(payload)

    def with_sources(positions: Sequence[int]) -> List[Dict[str, Any]]:
        return rag_messages(messages, numbered_sources([texts[p] for p in positions]), instructions)

    everything = list(range(len(texts)))
    prompt_tokens, window = await counter.count_chat(model, payload, with_sources(everything))
    if prompt_tokens + generation_reserve(window, max_tokens) <= window:
        return FittedContext(with_sources(everything), everything)

    lines = numbered_sources(texts)
    (own_tokens, _), (base_tokens, _) = await asyncio.gather(
        counter.count_chat(model, payload, messages), counter.count_chat(model, payload, with_sources([]))
    )
    line_tokens = await asyncio.gather(
        *(counter.count_text(model, line if number == 0 else f"\n{line}") for number, line in enumerate(lines))
    )
    if not request_fits(window, own_tokens, max_tokens):
        raise GatewayError(
            400,
            does_not_fit_message(model, window, own_tokens, max_tokens),
            code="context_length_exceeded",
            param="messages",
        )
    scores = [float(hit.get("score", 0.0)) for hit in hits[: len(texts)]]
    kept = fit_sources(line_tokens, scores, sources_budget(window, base_tokens, max_tokens))
    while kept:
        fitted = with_sources(kept)
        prompt_tokens, _ = await counter.count_chat(model, payload, fitted)
        if prompt_tokens + generation_reserve(window, max_tokens) <= window:
            return FittedContext(fitted, kept)
        kept = kept[:-1]
    return FittedContext(list(messages), [])
