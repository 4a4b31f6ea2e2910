"""Per-key limits on both stores: in-process counters and a real redis-server (ci/install-tools.sh)."""

import asyncio
import contextlib
import subprocess
import time

import pytest

from llm_serving.gateway.limits import (
    InProcessLimiter,
    RedisLimiter,
    build_limiter,
    limits_for,
    reserved_tokens,
    window_of,
)
from llm_serving.traffic_config import LimitConfig, LimitsConfig
from tests.e2e.servers import free_port, redis_server


class Clock:
    def __init__(self, now=1000.0):
        self.now = now

    def __call__(self):
        return self.now


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    with redis_server(tmp_path_factory.mktemp("redis")) as url:
        yield url


def limiters(redis_url, clock, window=60):
    config = LimitsConfig(window_seconds=window)
    return [InProcessLimiter(config, clock=clock), RedisLimiter(config, redis_url, clock=clock)]


def run(coroutine):
    return asyncio.run(coroutine)


@pytest.mark.parametrize("store", [0, 1], ids=["in-process", "redis"])
def test_requests_per_window_refuse_then_reset(redis_url, store):
    async def scenario():
        clock = Clock(60_000.0 + 50 + store * 600)  # 10 s before the window ends
        limiter = limiters(redis_url, clock)[store]
        limit = LimitConfig(requests=2)
        key = f"req-{store}-{time.time()}"
        for _ in range(2):
            admission, refusal = await limiter.admit(key, limit, 0)
            assert refusal is None
            await limiter.settle(admission, 5)
        admission, refusal = await limiter.admit(key, limit, 0)
        assert admission is None and refusal.limit == "requests" and refusal.allowed == 2
        assert refusal.retry_after_s == 10
        clock.now += 10  # the next window
        assert (await limiter.admit(key, limit, 0))[1] is None
        await limiter.close()

    run(scenario())


@pytest.mark.parametrize("store", [0, 1], ids=["in-process", "redis"])
def test_tokens_are_reserved_then_settled_from_usage(redis_url, store):
    async def scenario():
        clock = Clock(120_000.0 + store * 600)
        limiter = limiters(redis_url, clock)[store]
        limit = LimitConfig(tokens=100)
        key = f"tok-{store}-{time.time()}"
        first, refusal = await limiter.admit(key, limit, 60)  # reserves 60
        assert refusal is None
        # 60 reserved + 60 more would exceed 100: refused while the first is in flight.
        assert (await limiter.admit(key, limit, 60))[1].limit == "tokens"
        await limiter.settle(first, 30)  # it used 30: 70 left
        second, refusal = await limiter.admit(key, limit, 60)
        assert refusal is None
        await limiter.settle(second, 75)  # now 105 used: over budget
        assert (await limiter.admit(key, limit, 0))[1].limit == "tokens"
        await limiter.close()

    run(scenario())


@pytest.mark.parametrize("store", [0, 1], ids=["in-process", "redis"])
def test_concurrent_requests(redis_url, store):
    async def scenario():
        limiter = limiters(redis_url, Clock())[store]
        limit = LimitConfig(concurrent=1)
        key = f"conc-{store}-{time.time()}"
        first, _ = await limiter.admit(key, limit, 0)
        refusal = (await limiter.admit(key, limit, 0))[1]
        assert refusal.limit == "concurrent" and refusal.retry_after_s == 1
        await limiter.settle(first, None)
        assert (await limiter.admit(key, limit, 0))[1] is None
        await limiter.close()

    run(scenario())


def test_redis_counters_are_shared_between_replicas(redis_url):
    async def scenario():
        clock = Clock(180_000.0)
        one, two = (RedisLimiter(LimitsConfig(), redis_url, clock=clock) for _ in range(2))
        limit = LimitConfig(requests=3)
        key = f"shared-{time.time()}"
        results = [await limiter.admit(key, limit, 0) for limiter in (one, two, one, two)]
        assert [refusal is None for _, refusal in results] == [True, True, True, False]
        await one.close()
        await two.close()

    run(scenario())


def test_unreachable_redis_admits_uncounted():
    async def scenario():
        limiter = RedisLimiter(LimitsConfig(), f"redis://127.0.0.1:{free_port()}/0")
        admission, refusal = await limiter.admit("k", LimitConfig(requests=1), 0)
        assert refusal is None and not admission.holds_slot and admission.uncounted
        await limiter.close()

    run(scenario())


def test_which_limits_apply():
    config = LimitsConfig(default=LimitConfig(requests=10), keys={"batch": LimitConfig(tokens=5), "free": LimitConfig()})
    assert limits_for(config, "someone").requests == 10
    assert limits_for(config, "batch").tokens == 5 and limits_for(config, "batch").requests is None
    assert limits_for(config, "free") is None  # an explicit empty entry means unlimited
    assert limits_for(LimitsConfig(), "anyone") is None


def test_reserved_tokens():
    assert reserved_tokens({"max_tokens": 16}) == 16
    assert reserved_tokens({"max_completion_tokens": 8, "max_tokens": 16}) == 8
    assert reserved_tokens({}) == 0 and reserved_tokens({"max_tokens": True}) == 0


def test_store_choice():
    assert isinstance(build_limiter(LimitsConfig()), InProcessLimiter)
    assert isinstance(build_limiter(LimitsConfig(redis_url_env="R"), {"R": "redis://x:6379/0"}), RedisLimiter)
    with pytest.raises(ValueError, match="REDIS_URL, which is not set"):
        build_limiter(LimitsConfig(redis_url_env="REDIS_URL"), {})


def test_counting_resumes_when_redis_comes_back(tmp_path):
    """Redis stopped: admitted uncounted; started again on the same port: the same limiter counts
    (and refuses) again, with no restart of the gateway."""
    async def admit(limiter, limit):
        return await limiter.admit("resumes", limit, 0)

    async def scenario():
        with redis_server(tmp_path) as url:
            limiter = RedisLimiter(LimitsConfig(), url, clock=Clock(360_000.0))
            limit = LimitConfig(requests=2)
            admission, _ = await admit(limiter, limit)
            assert not admission.uncounted
        # the server is gone now
        admission, refusal = await admit(limiter, limit)
        assert refusal is None and admission.uncounted
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        server = subprocess.Popen(["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "",
                                   "--appendonly", "no", "--dir", str(tmp_path)], stdout=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 10
            while subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True,
                                 text=True).stdout.strip() != "PONG":
                assert time.monotonic() < deadline
                await asyncio.sleep(0.1)
            verdicts = [await admit(limiter, limit) for _ in range(3)]
            assert [a is not None and not a.uncounted for a, _ in verdicts] == [True, True, False]
            assert verdicts[2][1].limit == "requests"  # the restarted (empty) store counts from zero
        finally:
            server.terminate()
            server.wait(10)
            await limiter.close()

    run(scenario())


class SlowReplyProxy:
    """A TCP proxy in front of Redis that can hold back its next replies (`hold_replies` of them):
    the client times out reading a reply the server has already applied, as a gateway replica
    starved of CPU did. With `refuse`, it drops what clients send (the store unreachable)."""

    def __init__(self, upstream_port: int, delay_s: float):
        self.upstream_port, self.delay_s = upstream_port, delay_s
        self.hold_replies = 0
        self.refuse = False
        self.port = None
        self._server = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _connection(self, client_reader, client_writer) -> None:
        server_reader, server_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)

        async def pump(reader, writer, replies: bool) -> None:
            try:
                while data := await reader.read(65536):
                    if not replies and self.refuse:
                        break
                    if replies and self.hold_replies:
                        self.hold_replies -= 1
                        await asyncio.sleep(self.delay_s)
                    writer.write(data)
                    await writer.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                writer.close()

        await asyncio.gather(pump(client_reader, server_writer, False), pump(server_reader, client_writer, True))

    async def close(self) -> None:
        self._server.close()


@contextlib.asynccontextmanager
async def limiter_behind_proxy(redis_url: str, delay_s: float):
    """A RedisLimiter (reply timeout 0.3 s) talking to Redis through a SlowReplyProxy."""
    proxy = SlowReplyProxy(int(redis_url.rsplit(":", 1)[1].split("/")[0]), delay_s)
    await proxy.start()
    limiter = RedisLimiter(LimitsConfig(), f"redis://127.0.0.1:{proxy.port}/0", clock=Clock(1000.0),
                           socket_timeout_s=0.3)
    try:
        yield proxy, limiter
    finally:
        await limiter.close()
        await proxy.close()


def stored_counts(redis_url: str, key: str):
    """What Redis holds for `key` (at Clock(1000.0)): requests and tokens in the window, slots taken."""
    import redis

    server = redis.Redis.from_url(redis_url)
    requests, tokens, in_flight = RedisLimiter._names(key, window_of(1000.0, LimitsConfig().window_seconds)[0])
    return int(server.get(requests) or 0), int(server.get(tokens) or 0), server.zcard(in_flight)


def test_a_retry_after_a_reply_timed_out_counts_a_request_once(redis_url):
    """redis-py retries a command whose reply timed out; the server had applied it. Admission and
    settle must not count twice: with INCR/DECR, 50 streams under CPU starvation left a key's
    in-flight count at +1 or -9 (issue 14's disconnect case)."""
    key, limit = f"retried-{time.time()}", LimitConfig(concurrent=10)

    async def scenario():
        async with limiter_behind_proxy(redis_url, delay_s=0.6) as (proxy, limiter):
            first, _ = await limiter.admit(key, limit, 10)  # scripts loaded, connection warm
            await limiter.settle(first, 4)
            assert stored_counts(redis_url, key) == (1, 4, 0)
            proxy.hold_replies = 1
            retried, refusal = await limiter.admit(key, limit, 10)
            assert refusal is None and not retried.uncounted
            assert stored_counts(redis_url, key) == (2, 14, 1), "an admission retried after its reply timed out counted twice"
            proxy.hold_replies = 1
            await limiter.settle(retried, 4)
            assert stored_counts(redis_url, key) == (2, 8, 0), "a settle retried after its reply timed out gave back twice"

    run(scenario())


def test_an_admission_whose_replies_timed_out_is_uncounted_and_its_settle_gives_the_slot_back(redis_url):
    """Both tries timed out, but Redis took the slot: the request goes on uncounted, and its settle
    gives back the slot and settles the tokens (with two CPU hogs, 3 slots stayed taken)."""
    key, limit = f"uncounted-{time.time()}", LimitConfig(concurrent=10)

    async def scenario():
        async with limiter_behind_proxy(redis_url, delay_s=0.6) as (proxy, limiter):
            await limiter.settle((await limiter.admit(key, limit, 0))[0], 0)  # scripts loaded, connection warm
            proxy.hold_replies = 2
            admission, refusal = await limiter.admit(key, limit, 10)
            assert refusal is None and admission.uncounted
            assert stored_counts(redis_url, key) == (2, 10, 1)  # counted and taken all the same
            await limiter.settle(admission, 4)
            assert stored_counts(redis_url, key) == (2, 4, 0)

    run(scenario())


def test_a_settle_that_fails_is_tried_again_later(redis_url, monkeypatch):
    from llm_serving.gateway import limits

    monkeypatch.setattr(limits, "SETTLE_RETRY_S", 0.3)
    key = f"settle-again-{time.time()}"

    async def scenario():
        async with limiter_behind_proxy(redis_url, delay_s=0) as (proxy, limiter):
            admission, _ = await limiter.admit(key, LimitConfig(concurrent=10), 0)
            proxy.refuse = True  # the store unreachable as the request ends
            await limiter.settle(admission, 0)
            assert stored_counts(redis_url, key)[2] == 1
            proxy.refuse = False
            await asyncio.sleep(0.8)
            assert stored_counts(redis_url, key)[2] == 0, "the failed settle was not tried again"

    run(scenario())
