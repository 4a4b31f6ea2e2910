"""Per-API-key limits: requests and tokens per fixed window, and requests in flight.

Accounting:
- requests: counted when admitted; a refused request does not count.
- tokens (prompt + generated): a request is admitted while the key's window total is below its
  budget and its own `max_tokens` (or `max_completion_tokens`) fits in what is left; that many
  tokens are reserved at admission and settled from the response's `usage` when it ends (the
  reservation is swapped for prompt + generated; a failed request gives it back). A request
  without `max_tokens` reserves nothing, so a window can overshoot by what its requests in
  flight generate. An empty window always admits one request, however large.
- concurrent: a slot taken at admission, given back when the response has been sent.

Store: with `limits.redis_url` (or `redis_url_env`), one Redis shared by every gateway replica,
each admission one atomic Lua script; otherwise counters in this process, so with N replicas a
key gets up to N times its limits. If Redis cannot be reached, requests are admitted uncounted:
limits protect capacity, they must not take the service down. Each such admission is marked
(`Admission.uncounted`; the gateway counts them in ray_llm_serving_limits_uncounted_requests_total)
and a warning is logged at most every 30 s; counting resumes with the first admission that reaches
Redis again (redis-py reconnects on its own). A slot taken before the outage and released during it
is given back by a second try SETTLE_RETRY_S later, or else stays counted in Redis until
CONCURRENCY_TTL_S expires it (or Redis restarts empty).

In Redis each slot is a member of a sorted set (its admission's id, scored by when it was taken),
not a counter: admission and settle are idempotent, so redis-py's retry after a timeout cannot
count a request twice. With INCR/DECR it did: a gateway replica starved of CPU timed out reading
replies the server had already applied, and the retries left a key's in-flight count at +1 or -9
after 50 streams (the fault battery's disconnect case under two CPU hogs).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Dict, Mapping, Optional, Protocol, Set, Tuple

from llm_serving.traffic_config import LimitConfig, LimitsConfig

logger = logging.getLogger(__name__)

CONCURRENCY_RETRY_AFTER_S = 1
# A settle that failed (the store unreachable, or its reply timed out twice) is tried once more this
# much later, in the background.
SETTLE_RETRY_S = 1.0
# A slot a crashed replica never gave back expires from Redis after this long (so does the slot of a
# request running longer than this: the key may then run one request over its `concurrent` limit).
CONCURRENCY_TTL_S = 600
KEY_PREFIX = "llm-serving:limits"


@dataclass(frozen=True)
class Refusal:
    """Why a request was refused and when to retry."""

    limit: str  # requests | tokens | concurrent
    allowed: int
    retry_after_s: int


@dataclass
class Admission:
    """A request holding a concurrency slot and a token reservation until it is settled."""

    key: str
    window: int
    reserved_tokens: int
    holds_slot: bool
    uncounted: bool = False  # admitted without counting: the store was unreachable
    # The slot's member in Redis's sorted set of the key's requests in flight. An uncounted admission
    # has one too: its reply may have timed out after Redis took the slot, which settle gives back.
    slot_id: str = ""


def window_of(now: float, window_s: int) -> Tuple[int, int]:
    """The window index holding `now` and the whole seconds until it ends (at least 1)."""
    index = int(now // window_s)
    return index, max(1, math.ceil((index + 1) * window_s - now))


def tokens_refused(used: int, reserve: int, budget: int) -> bool:
    return used >= budget or (used > 0 and used + reserve > budget)


class Limiter(Protocol):
    """What the gateway asks of a limit store (InProcessLimiter, RedisLimiter)."""

    async def admit(self, key: str, limit: LimitConfig, reserve: int) -> Tuple[Optional[Admission], Optional[Refusal]]:
        """Count a request of `key` reserving `reserve` tokens: an Admission to settle later, or
        why it is refused."""
        ...

    async def settle(self, admission: Admission, used_tokens: Optional[int]) -> None:
        """Release the admission's concurrency slot and swap its reservation for `used_tokens`."""
        ...

    async def close(self) -> None: ...


class InProcessLimiter:
    """Counters in this replica's memory (one event loop: no locks needed between awaits)."""

    def __init__(self, config: LimitsConfig, clock: Callable[[], float] = time.time):
        self.window_s = config.window_seconds
        self._clock = clock
        self._requests: Dict[Tuple[str, int], int] = {}
        self._tokens: Dict[Tuple[str, int], int] = {}
        self._in_flight: Dict[str, int] = {}

    async def admit(self, key: str, limit: LimitConfig, reserve: int) -> Tuple[Optional[Admission], Optional[Refusal]]:
        window, retry_after = window_of(self._clock(), self.window_s)
        self._forget_old_windows(window)
        requests = self._requests.get((key, window), 0)
        tokens = self._tokens.get((key, window), 0)
        in_flight = self._in_flight.get(key, 0)
        if limit.requests is not None and requests >= limit.requests:
            return None, Refusal("requests", limit.requests, retry_after)
        if limit.tokens is not None and tokens_refused(tokens, reserve, limit.tokens):
            return None, Refusal("tokens", limit.tokens, retry_after)
        if limit.concurrent is not None and in_flight >= limit.concurrent:
            return None, Refusal("concurrent", limit.concurrent, CONCURRENCY_RETRY_AFTER_S)
        self._requests[(key, window)] = requests + 1
        self._tokens[(key, window)] = tokens + reserve
        self._in_flight[key] = in_flight + 1
        return Admission(key, window, reserve, holds_slot=True), None

    async def settle(self, admission: Admission, used_tokens: Optional[int]) -> None:
        if admission.holds_slot:
            self._in_flight[admission.key] = max(0, self._in_flight.get(admission.key, 1) - 1)
        delta = (used_tokens or 0) - admission.reserved_tokens
        slot = (admission.key, admission.window)
        if delta and slot in self._tokens:
            self._tokens[slot] = max(0, self._tokens[slot] + delta)

    def _forget_old_windows(self, window: int) -> None:
        if len(self._requests) > 1024 or len(self._tokens) > 1024:
            self._requests = {k: v for k, v in self._requests.items() if k[1] >= window}
            self._tokens = {k: v for k, v in self._tokens.items() if k[1] >= window}

    async def close(self) -> None:
        pass


# Atomic admission: read the counters, refuse (1 requests, 2 tokens, 3 concurrent) or count and take
# slot ARGV[7]. Run again for the same slot (a retry of an admission that went through), it counts
# nothing more.
_ADMIT_SCRIPT = """
local request_limit, token_limit, concurrent_limit = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local reserve, ttl, concurrent_ttl = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local slot, now = ARGV[7], tonumber(ARGV[8])
if redis.call('ZSCORE', KEYS[3], slot) then return 0 end
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - concurrent_ttl)
local requests = tonumber(redis.call('GET', KEYS[1]) or '0')
local tokens = tonumber(redis.call('GET', KEYS[2]) or '0')
local in_flight = redis.call('ZCARD', KEYS[3])
if request_limit > 0 and requests >= request_limit then return 1 end
if token_limit > 0 and (tokens >= token_limit or (tokens > 0 and tokens + reserve > token_limit)) then return 2 end
if concurrent_limit > 0 and in_flight >= concurrent_limit then return 3 end
redis.call('INCR', KEYS[1]); redis.call('EXPIRE', KEYS[1], ttl)
redis.call('INCRBY', KEYS[2], reserve); redis.call('EXPIRE', KEYS[2], ttl)
redis.call('ZADD', KEYS[3], now, slot); redis.call('EXPIRE', KEYS[3], concurrent_ttl)
return 0
"""
# Settle: give slot ARGV[1] back and, only if it was still taken (not on a retry), swap the token
# reservation for what was used (ARGV[2], the difference).
_SETTLE_SCRIPT = """
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 0 end
local delta = tonumber(ARGV[2])
if delta ~= 0 and redis.call('EXISTS', KEYS[2]) == 1 then redis.call('INCRBY', KEYS[2], delta) end
return 1
"""
_REFUSED_LIMIT = {1: "requests", 2: "tokens", 3: "concurrent"}


class RedisLimiter:
    """Counters in one Redis shared by every gateway replica."""

    def __init__(
        self, config: LimitsConfig, url: str, clock: Callable[[], float] = time.time, socket_timeout_s: float = 2.0
    ):
        import redis.asyncio as redis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff
        from redis.exceptions import ConnectionError, TimeoutError

        self.window_s = config.window_seconds
        self._clock = clock
        # One immediate retry on a new connection: after Redis restarts, every pooled connection is
        # stale once, and without it that request would go uncounted (and a settle be lost, leaving a
        # `concurrent` slot taken for CONCURRENCY_TTL_S). Both scripts are safe to run twice.
        self._redis = redis.from_url(
            url,
            socket_timeout=socket_timeout_s,
            socket_connect_timeout=socket_timeout_s,
            retry=Retry(NoBackoff(), 1),
            retry_on_error=[ConnectionError, TimeoutError],
        )
        self._admit = self._redis.register_script(_ADMIT_SCRIPT)
        self._settle = self._redis.register_script(_SETTLE_SCRIPT)
        self._last_warning = 0.0
        self._store_down = False
        self._retries: Set[asyncio.Task] = set()  # settles tried again (a reference keeps each alive)

    @staticmethod
    def _names(key: str, window: int) -> Tuple[str, str, str]:
        return (
            f"{KEY_PREFIX}:{key}:{window}:requests",
            f"{KEY_PREFIX}:{key}:{window}:tokens",
            in_flight_key(key),
        )

    async def admit(self, key: str, limit: LimitConfig, reserve: int) -> Tuple[Optional[Admission], Optional[Refusal]]:
        now = self._clock()
        window, retry_after = window_of(now, self.window_s)
        slot_id = uuid.uuid4().hex
        try:
            verdict = await self._admit(
                keys=self._names(key, window),
                args=[
                    limit.requests or 0,
                    limit.tokens or 0,
                    limit.concurrent or 0,
                    reserve,
                    2 * self.window_s,
                    CONCURRENCY_TTL_S,
                    slot_id,
                    now,
                ],
            )
        except Exception as error:  # Redis down: admit, uncounted, rather than refuse everyone
            self._warn(error)
            return Admission(key, window, reserve, holds_slot=False, uncounted=True, slot_id=slot_id), None
        if self._store_down:
            self._store_down = False
            logger.warning("rate-limit store reachable again, requests are counted again")
        if verdict:
            limit_name = _REFUSED_LIMIT[int(verdict)]
            allowed = getattr(limit, limit_name)
            wait = CONCURRENCY_RETRY_AFTER_S if limit_name == "concurrent" else retry_after
            return None, Refusal(limit_name, allowed, wait)
        return Admission(key, window, reserve, holds_slot=True, slot_id=slot_id), None

    async def settle(self, admission: Admission, used_tokens: Optional[int]) -> None:
        """Give the slot back (a no-op in Redis for a slot it never took) and settle the tokens. If
        that fails, once more SETTLE_RETRY_S later in the background: the script is idempotent."""
        if not admission.slot_id:
            return
        _, tokens, in_flight = self._names(admission.key, admission.window)
        settle = functools.partial(
            self._settle,
            keys=[in_flight, tokens],
            args=[admission.slot_id, (used_tokens or 0) - admission.reserved_tokens],
        )
        try:
            await settle()
        except Exception as error:
            self._warn(error)
            retry = asyncio.get_running_loop().create_task(self._settle_later(settle))
            self._retries.add(retry)
            retry.add_done_callback(self._retries.discard)

    async def _settle_later(self, settle: Callable[[], Any]) -> None:
        await asyncio.sleep(SETTLE_RETRY_S)
        try:
            await settle()
        except Exception as error:  # the slot stays taken until CONCURRENCY_TTL_S expires it
            self._warn(error)

    def _warn(self, error: Exception) -> None:
        now = time.monotonic()
        if not self._store_down or now - self._last_warning > 30:  # at once when it goes down, then every 30 s
            self._store_down = True
            self._last_warning = now
            logger.warning("rate-limit store unreachable, admitting requests uncounted: %s", error)

    async def close(self) -> None:
        for retry in list(self._retries):
            retry.cancel()
        try:
            await self._redis.aclose()
        except Exception:
            pass


def in_flight_key(key: str) -> str:
    """The Redis sorted set of a key's requests in flight (`in-flight` held a counter before)."""
    return f"{KEY_PREFIX}:{key}:in-flight-slots"


def limits_for(config: LimitsConfig, key: str) -> Optional[LimitConfig]:
    """The limits that apply to one key name, or None when none do (the fast path: no counting)."""
    limit = config.keys.get(key, config.default)
    if limit is None or (limit.requests is None and limit.tokens is None and limit.concurrent is None):
        return None
    return limit


def build_limiter(config: LimitsConfig, environ: Optional[Mapping[str, str]] = None) -> Limiter:
    """The limiter the config asks for; raises ValueError naming the missing environment variable."""
    import os

    environ = os.environ if environ is None else environ
    url = config.redis_url
    if config.redis_url_env:
        url = environ.get(config.redis_url_env)
        if not url:
            raise ValueError(
                f"traffic.limits.redis_url_env names {config.redis_url_env}, which is not set; "
                "set it (e.g. from a Secret via secretEnv) or use traffic.limits.redis_url"
            )
    if url:
        return RedisLimiter(config, url)
    return InProcessLimiter(config)


def reserved_tokens(payload: Mapping[str, Any]) -> int:
    """Tokens a request reserves at admission: what it may generate, when it says."""
    for field in ("max_completion_tokens", "max_tokens"):
        value = payload.get(field)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return 0


async def close_quietly(limiter: Limiter) -> None:
    try:
        await asyncio.wait_for(limiter.close(), timeout=2)
    except Exception:
        pass
