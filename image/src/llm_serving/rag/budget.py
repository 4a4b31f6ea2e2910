"""Fitting retrieved context into the chat model's context window: pure functions over token counts.

The window (`max_model_len`) holds the prompt and the generated tokens. A retrieval-augmented
prompt is the request's own messages, the RAG instructions, and the numbered sources; what is left
after the first two and the room for generation is the sources' budget. Sources are whole chunks,
dropped from the lowest-scored until the rest fit, so the kept ones are always the best-ranked.
"""

from __future__ import annotations

from typing import List, Optional, Sequence

# Room kept for generation when a request does not set max_tokens (vLLM would then generate up to
# the rest of the window): a quarter of the window, at most this many tokens. Enough for a short
# answer on a 512-token test model (128), and an ample one on real models (1024 on 4k and larger).
MAX_GENERATION_RESERVE_TOKENS = 1024


def generation_reserve(max_model_len: int, max_tokens: Optional[int]) -> int:
    """Tokens kept free for the answer: the request's max_tokens, else a quarter of the window
    (at most MAX_GENERATION_RESERVE_TOKENS)."""
    if max_tokens is not None:
        return max_tokens
    return min(max_model_len // 4, MAX_GENERATION_RESERVE_TOKENS)


def request_fits(max_model_len: int, prompt_tokens: int, max_tokens: Optional[int]) -> bool:
    """Whether the request with no retrieved text fits at all, as the engine would judge it: its
    prompt plus max_tokens (at least one generated token when max_tokens is not set)."""
    return prompt_tokens + max(max_tokens or 1, 1) <= max_model_len


def sources_budget(max_model_len: int, base_prompt_tokens: int, max_tokens: Optional[int]) -> int:
    """Tokens the sources may take: the window less the prompt without sources (the request's own
    messages and the RAG instructions) and the room for generation; never negative."""
    return max(max_model_len - base_prompt_tokens - generation_reserve(max_model_len, max_tokens), 0)


def fit_sources(source_tokens: Sequence[int], scores: Sequence[float], budget: int) -> List[int]:
    """The positions of the sources to keep, best-scored first: whole sources, taken in score order
    while their tokens fit in `budget`; the first one that does not fit is dropped with every
    lower-scored one (a lower-scored chunk never displaces a better one, even if it is shorter)."""
    if len(source_tokens) != len(scores):
        raise ValueError(f"{len(source_tokens)} token counts for {len(scores)} scores")
    # Stable: equal scores keep the retrieval order.
    order = sorted(range(len(scores)), key=lambda position: -scores[position])
    kept: List[int] = []
    used = 0
    for position in order:
        if used + source_tokens[position] > budget:
            break
        used += source_tokens[position]
        kept.append(position)
    return kept


def does_not_fit_message(model: str, max_model_len: int, prompt_tokens: int, max_tokens: Optional[int]) -> str:
    """The refusal of a request that cannot fit even without any retrieved text."""
    wanted = f"max_tokens is {max_tokens}" if max_tokens is not None else "at least 1 token must be generated"
    return (
        f"The request does not fit `{model}`'s context window even without any retrieved text: its own "
        f"messages are {prompt_tokens} prompt tokens and {wanted}, more than max_model_len {max_model_len} "
        "allows. Shorten the messages or lower max_tokens."
    )
