"""The live part of the app's config: aliases with weighted variants, sticky identity, per-key limits.

It is `args.traffic` of `llm_serving.app:build_app`, but it reaches the replicas as the gateway
deployment's Ray Serve `user_config` (the chart renders it into serveConfigV2 `deployments:`),
so changing it is a `reconfigure` of the running replicas, never a restart of an engine: Serve
restarts every replica when an application's `args` change, not when a `user_config` does.
"""

from __future__ import annotations

import re
from typing import Any, Dict, List, Optional

from typing_extensions import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

IDENTITY_SOURCE_PATTERN = r"^(header:[A-Za-z0-9-]{1,64}|user|api_key)$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class ShadowConfig(_Strict):
    """Mirror a share of an alias's requests to another served model and discard its answers."""

    variant: str = Field(..., description="Served model (a key under `models`) that gets the copies.")
    percent: float = Field(
        ..., ge=0, le=100, description="Share of the alias's requests copied to it, in percent (0 to 100)."
    )


class AliasConfig(_Strict):
    """A public model name that resolves, per request, to one of several served models."""

    variants: Dict[str, Annotated[float, Field(ge=0)]] = Field(
        ...,
        min_length=1,
        description=(
            "Served models (keys under `models`) and their relative weights, e.g. {chat-v1: 90, chat-v2: 10}; "
            "weights are shares of the total, 0 takes a variant out of rotation."
        ),
    )

    shadow: Optional[ShadowConfig] = Field(
        None,
        description=(
            "Copy this share of the alias's requests (not stream, answer discarded, outside the caller's limits) "
            "to another served model, e.g. to load-test a candidate with real traffic before giving it weight."
        ),
    )

    @field_validator("variants")
    @classmethod
    def _weights(cls, value: Dict[str, float]) -> Dict[str, float]:
        if sum(value.values()) <= 0:
            raise ValueError("the variants' weights add up to 0; give at least one variant a positive weight")
        return value


class LimitConfig(_Strict):
    """Limits of one API key; an unset limit does not apply."""

    requests: Optional[int] = Field(None, ge=1, description="Requests per window (per minute by default).")
    tokens: Optional[int] = Field(
        None, ge=1, description="Prompt plus generated tokens per window (per minute by default)."
    )
    concurrent: Optional[int] = Field(None, ge=1, description="Requests in flight at once.")


class LimitsConfig(_Strict):
    """Per-API-key limits, answered with 429 and Retry-After when exceeded."""

    window_seconds: int = Field(
        60, ge=1, le=3600, description="Length of the fixed window that `requests` and `tokens` count in."
    )
    default: Optional[LimitConfig] = Field(
        None, description="Limits of every key that has no entry under `keys` (none when unset)."
    )
    keys: Dict[str, LimitConfig] = Field(
        default_factory=dict, description="Limits by API key name (the `name` in the keys document)."
    )
    redis_url: Optional[str] = Field(
        None,
        pattern=r"^rediss?://",
        description=(
            "Redis holding the counters, shared by every gateway replica (redis:// or rediss://); "
            "without it (and without redis_url_env) each replica counts on its own."
        ),
    )
    redis_url_env: Optional[str] = Field(
        None,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="Name of an environment variable holding the Redis URL (e.g. from a Secret, with a password).",
    )

    @model_validator(mode="after")
    def _one_redis_source(self) -> "LimitsConfig":
        if self.redis_url and self.redis_url_env:
            raise ValueError("set only one of limits.redis_url and limits.redis_url_env")
        return self


class TrafficConfig(_Strict):
    """Aliases, sticky routing and per-key limits; applied in place by `reconfigure` when changed."""

    aliases: Dict[str, AliasConfig] = Field(
        default_factory=dict,
        description="Public names that split traffic by weight between served models, keyed by the alias name.",
    )
    sticky_identity: List[str] = Field(
        default_factory=lambda: ["header:x-session-id", "user", "api_key"],
        description=(
            "Where a caller's identity comes from, first match wins: header:<name>, user (the request's "
            "`user` field) or api_key (the key's name). The same identity always gets the same variant "
            "while the weights stay the same; requests with none are spread by weight."
        ),
    )
    limits: LimitsConfig = Field(default_factory=LimitsConfig, description="Per-API-key limits.")
    keys_revision: Optional[str] = Field(
        None,
        description=(
            "Any value; changing it re-reads the API keys sources (gateway.auth.api_keys) in place, "
            "e.g. after the keys Secret changed."
        ),
    )

    @field_validator("sticky_identity")
    @classmethod
    def _identity_sources(cls, value: List[str]) -> List[str]:
        for source in value:
            if not re.match(IDENTITY_SOURCE_PATTERN, source):
                raise ValueError(
                    f"sticky_identity entry {source!r} is not one of header:<name>, user, api_key"
                )
        return value

    def check_against_models(self, model_names: List[str], where: str = "traffic") -> None:
        """Cross-field rules that need the served models; raises ValueError naming the key and fix."""
        served = set(model_names)
        for alias, config in self.aliases.items():
            if alias in served:
                raise ValueError(
                    f"{where}.aliases.{alias}: the alias has the name of a served model; rename the alias"
                )
            unknown = sorted(set(config.variants) - served)
            if unknown:
                raise ValueError(
                    f"{where}.aliases.{alias}.variants: {', '.join(unknown)} not served; "
                    f"variants must be keys under `models` ({', '.join(sorted(served))})"
                )
            if config.shadow is not None and config.shadow.variant not in served:
                raise ValueError(
                    f"{where}.aliases.{alias}.shadow.variant: {config.shadow.variant} not served; "
                    f"it must be a key under `models` ({', '.join(sorted(served))})"
                )


def traffic_config_from_user_config(user_config: Any) -> TrafficConfig:
    """Validate a Serve user_config into a TrafficConfig (raises pydantic's ValidationError)."""
    return TrafficConfig.model_validate(user_config or {})
