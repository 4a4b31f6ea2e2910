"""The live part of the app's config: aliases with weighted variants, sticky identity, per-key limits.

It is `app.traffic` of a values profile, and it reaches the replicas as the Gateway deployment's
Ray Serve `user_config` (llm_serving.serve_config renders it there, as the chart does), so changing
it is a `reconfigure` of the running replicas, never a restart of an engine: Serve restarts every
replica when an application's `args` change, not when a `user_config` does.

`parse_traffic_config` is its one validation: the replica runs it on every reconfigure, and
`llm-serving serve` runs it before deploying. The chart repeats the cross-field checks at
`helm template` time (templates/validate.yaml), pinned to the same messages by
tests/cases/invalid_traffic.yaml.
"""

from __future__ import annotations

import re
from typing import Any, Dict, List, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from typing_extensions import Annotated

from llm_serving.config import ConfigError, validation_problems

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
    def _one_redis_source(self) -> LimitsConfig:
        if self.redis_url and self.redis_url_env:
            raise ValueError("set only one of redis_url and redis_url_env")
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
                raise ValueError(f"sticky_identity entry {source!r} is not one of header:<name>, user, api_key")
        return value

    def problems_with_models(self, model_names: List[str]) -> List[str]:
        """Cross-field rules that need the served models: one line per problem, naming the key."""
        served = set(model_names)
        served_list = ", ".join(sorted(served))
        problems = []
        for alias, config in self.aliases.items():
            where = f"traffic.aliases.{alias}"
            if alias in served:
                problems.append(f"{where}: the alias has the name of a served model; rename the alias")
            unknown = sorted(set(config.variants) - served)
            if unknown:
                problems.append(
                    f"{where}.variants: {', '.join(unknown)} not served; variants must be served models ({served_list})"
                )
            if config.shadow is not None and config.shadow.variant not in served:
                problems.append(
                    f"{where}.shadow.variant: {config.shadow.variant} not served; "
                    f"it must be a served model ({served_list})"
                )
        return problems


class TrafficConfigError(ConfigError):
    """A traffic config that does not validate; `problems` has one line per bad key."""

    def __init__(self, problems: List[str]):
        self.problems = problems
        super().__init__(
            "\n".join([f"invalid traffic config ({len(problems)} problem(s)):"] + [f"  - {p}" for p in problems])
        )


def parse_traffic_config(user_config: Any, model_names: List[str]) -> TrafficConfig:
    """The one validation of a traffic config (a Serve user_config; None or {} is the default)
    against the models the app serves; raises TrafficConfigError."""
    try:
        config = TrafficConfig.model_validate(user_config or {})
    except ValidationError as error:
        raise TrafficConfigError(validation_problems(error, root="traffic")) from None
    problems = config.problems_with_models(model_names)
    if problems:
        raise TrafficConfigError(problems)
    return config
