"""The gateway's live traffic policy (aliases, sticky variants, per-key limits) and its reconfiguration.

`TrafficControl` holds one immutable `TrafficState` and swaps it whole when Ray Serve calls the
deployment's `reconfigure(user_config)`. A config that does not validate (or whose keys or Redis
URL cannot be read) is rejected: the old state stays in force and the error is logged and shown
on /readyz. Only the very first config of a replica is raised: there is no old one to keep.

Why not raise every time: Ray Serve (2.60, deployment_state.py) stops a replica whose reconfigure
raises and starts a new one with the same user_config, so raising would restart the gateway
(in direct streaming, the engine) and then fail it again, taking the service down.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional

from starlette.types import Message, Send

from llm_serving.config import GatewayConfig
from llm_serving.gateway.api_keys import ApiKeyStore
from llm_serving.gateway.asgi import rewrite_response_body, with_response_headers
from llm_serving.gateway.errors import GatewayError
from llm_serving.gateway.limits import (
    Admission,
    InProcessLimiter,
    Limiter,
    build_limiter,
    close_quietly,
    limits_for,
    reserved_tokens,
)
from llm_serving.gateway.routing import AliasTable, caller_identity, choose_variant
from llm_serving.traffic_config import TrafficConfig, parse_traffic_config

logger = logging.getLogger(__name__)

VARIANT_HEADER = b"x-llm-serving-variant"


@dataclass(frozen=True)
class TrafficState:
    config: TrafficConfig
    aliases: AliasTable
    limiter: Limiter


class TrafficControl:
    """The policy one gateway (ingress replica or direct-streaming engine replica) applies."""

    def __init__(self, gateway: GatewayConfig, model_names: List[str], key_store: Optional[ApiKeyStore]):
        self._gateway = gateway
        self._model_names = list(model_names)
        self._key_store = key_store
        default = TrafficConfig()
        self.state = TrafficState(default, AliasTable({}), InProcessLimiter(default.limits))
        self.rejected: Optional[str] = None  # why the last new config was refused, if it was
        self._configured = False

    async def reconfigure(self, user_config: Any) -> None:
        try:
            state, keys = self._build(user_config)
        except ValueError as error:
            message = f"traffic config rejected, the previous one stays in force: {error}"
            if not self._configured:
                raise ValueError(str(error)) from None
            logger.error(message)
            self.rejected = message
            return
        old = self.state
        if keys is not None and self._key_store is not None:
            self._key_store.replace_keys(keys)
        self.state = state
        self.rejected = None
        self._configured = True
        if state.limiter is not old.limiter:
            await close_quietly(old.limiter)
        logger.info(
            "traffic config applied: aliases %s, limits for %s",
            state.aliases.names,
            sorted(state.config.limits.keys) or "no key",
        )

    def _build(self, user_config: Any):
        config = parse_traffic_config(user_config, self._model_names)  # raises TrafficConfigError
        keys = None
        if self._key_store is not None and config.keys_revision != self.state.config.keys_revision:
            # Re-read the keys sources (a changed Secret); a bad document raises KeysFileError.
            keys = ApiKeyStore.from_config(self._gateway.auth.api_keys).keys
        old = self.state
        same_store = config.limits.model_dump(include={"window_seconds", "redis_url", "redis_url_env"}) == (
            old.config.limits.model_dump(include={"window_seconds", "redis_url", "redis_url_env"})
        )
        limiter = old.limiter if same_store else build_limiter(config.limits)
        aliases = AliasTable({name: alias.variants for name, alias in config.aliases.items()})
        return TrafficState(config, aliases, limiter), keys

    def status(self) -> Dict[str, Any]:
        """For /readyz: what is in force and whether a newer config was refused."""
        config = self.state.config
        return {
            "aliases": {name: alias.variants for name, alias in config.aliases.items()},
            "keys_revision": config.keys_revision,
            "rejected": self.rejected,
        }


def resolve_alias(
    state: TrafficState, payload: Dict, header: Callable[[str], Optional[str]], api_key_name: Optional[str]
) -> Optional[str]:
    """If the request names an alias, pick its variant, rewrite `model` and return the variant."""
    alias = payload.get("model")
    if not isinstance(alias, str) or alias not in state.aliases:
        return None
    identity = caller_identity(state.config.sticky_identity, header, payload.get("user"), api_key_name)
    variant = choose_variant(state.aliases.variants_of(alias), alias, identity)
    payload["model"] = variant
    return variant


async def admit(state: TrafficState, key_name: str, payload: Dict) -> Optional[Admission]:
    """Count the request against its key's limits, or raise a 429 GatewayError."""
    limit = limits_for(state.config.limits, key_name)
    if limit is None:
        return None
    admission, refusal = await state.limiter.admit(key_name, limit, reserved_tokens(payload))
    if refusal is None:
        return admission
    window = state.config.limits.window_seconds
    what = {
        "requests": f"{refusal.allowed} requests per {window} s",
        "tokens": f"{refusal.allowed} tokens per {window} s",
        "concurrent": f"{refusal.allowed} concurrent requests",
    }[refusal.limit]
    raise GatewayError(
        429,
        f"Rate limit reached for API key {key_name}: {what}. Retry after {refusal.retry_after_s} s.",
        code="rate_limit_exceeded",
        param=refusal.limit,
        headers=[(b"retry-after", str(refusal.retry_after_s).encode())],
    )


async def settle(
    state: TrafficState, admission: Optional[Admission], prompt: Optional[int], generated: Optional[int]
) -> None:
    if admission is None:
        return
    used = (prompt or 0) + (generated or 0) if prompt is not None or generated is not None else None
    await state.limiter.settle(admission, used)


def with_variant_header(send: Send, variant: str) -> Send:
    """Name the variant that served an alias request (errors included) in a response header."""
    return with_response_headers(send, lambda headers: [*headers, (VARIANT_HEADER, variant.encode())])


def shadow_target(
    state: TrafficState, alias: str, served_by: str, draw: Callable[[], float] = random.random
) -> Optional[str]:
    """The model a copy of this alias request goes to, if it is one of the mirrored share (a copy
    to the variant that already serves it would only double the load)."""
    shadow = state.config.aliases[alias].shadow
    if shadow is None or shadow.variant == served_by or draw() * 100 >= shadow.percent:
        return None
    return shadow.variant


def shadow_body(payload: Dict, variant: str) -> bytes:
    """The mirrored request: the same request for `variant`, answered in one piece (not streamed)."""
    copy = {key: value for key, value in payload.items() if key not in ("stream", "stream_options")}
    return json.dumps({**copy, "model": variant}).encode()


def alias_card(alias: str) -> Dict[str, Any]:
    """An alias as OpenAI's model object (GET /v1/models and /v1/models/{alias}). No `created`:
    an alias has no creation time, and a per-replica one would differ between gateway replicas
    (Ray Serve LLM's own cards have none either)."""
    return {"id": alias, "object": "model", "owned_by": "llm-serving-alias"}


def with_aliases_listed(send: Send, aliases: List[str]) -> Send:
    """Append the aliases to a `GET /v1/models` list (whichever app produced it)."""

    def listed(start: Message, body: bytes) -> bytes:
        try:
            listing = json.loads(body)
            listing["data"] += [alias_card(alias) for alias in aliases]
            return json.dumps(listing).encode()
        except (ValueError, KeyError, TypeError, AttributeError):
            return body  # not a list we understand: pass it on unchanged

    return rewrite_response_body(send, lambda start: start["status"] == 200, listed)
