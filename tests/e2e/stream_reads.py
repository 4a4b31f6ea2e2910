"""How a streamed chat completion reaches a real client: the time of every read that brought bytes.

Issue 17 saw whole streams arrive in one read. Captured on the wire (tcpdump on lo), the engine
replica writes one TCP segment per SSE event and HAProxy forwards them as they come; reads merge
only when a process on the way was not on a CPU while events arrived. So the checks below ask
for what a streaming server always gives and a buffering one never does: many separate reads, the
first well before the last. Event counts are not checked: a starved engine replica merges tokens
into one event (vLLM's RequestOutputCollector).

A loaded machine starves the engine replica's own HTTP sender for whole streams, HAProxy or not:
with two CPU-bound processes in another session (the kernel's autogroups share the CPU between
sessions, whatever the nice values), 16 of 20 streams read straight from the replica's port
arrived in 1-3 reads, and 15 of 20 through HAProxy (17 of 20 with HAProxy at nice 0). CI once saw
5 such streams in a row within two seconds. So a check takes the first of up to ATTEMPTS streams
that streamed, spread over several seconds so one busy moment cannot fail it; a layer that buffers
fails every one of them. The failure message gives the load average, to tell the two apart.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiohttp
import httpx

STREAM_TOKENS = 64
ATTEMPTS = 12
PAUSE_BETWEEN_ATTEMPTS_S = 0.5
# Reads closer together than this count as one: the client picked them up in one go.
SAME_READ_S = 0.001


def stream_request(model: str) -> dict:
    # ignore_eos makes the tiny model loop on its end-of-sequence token, which decodes to "": vLLM
    # sends no event for an empty delta unless it carries logprobs, so logprobs gives (about) one
    # event per token instead of a silent second half and one last event holding it all.
    return {"model": model, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": STREAM_TOKENS,
            "temperature": 0, "ignore_eos": True, "logprobs": True, "stream": True}


@dataclass
class StreamReads:
    arrivals: list[float]  # seconds after the request was sent, one per read that brought bytes
    body: bytes

    @property
    def events(self) -> int:
        return self.body.count(b"data: {")

    @property
    def distinct_reads(self) -> int:
        return 1 + sum(1 for a, b in zip(self.arrivals, self.arrivals[1:]) if b - a > SAME_READ_S)

    @property
    def first_share(self) -> float:
        """When the first bytes came, as a share of the time the last came (1.0: all at once)."""
        return self.arrivals[0] / self.arrivals[-1]

    def streamed(self) -> bool:
        # A layer that holds the stream gives one read at the end (1 distinct, first_share ~1).
        return self.distinct_reads >= 6 and self.first_share < 0.6

    def __str__(self) -> str:
        return (f"{len(self.arrivals)} reads ({self.distinct_reads} distinct) of {self.events} events, first at "
                f"{self.arrivals[0] * 1e3:.1f} ms, last at {self.arrivals[-1] * 1e3:.1f} ms")


async def read_with_aiohttp(session: aiohttp.ClientSession, url: str, api_key: str, body: dict) -> StreamReads:
    arrivals, chunks = [], []
    start = time.perf_counter()
    async with session.post(url, json=body, headers={"authorization": f"Bearer {api_key}"}) as response:
        assert response.status == 200, await response.text()
        async for chunk in response.content.iter_any():  # whatever the socket had, as it comes
            arrivals.append(time.perf_counter() - start)
            chunks.append(chunk)
    return StreamReads(arrivals, b"".join(chunks))


async def read_with_httpx(client: httpx.AsyncClient, url: str, api_key: str, body: dict) -> StreamReads:
    arrivals, chunks = [], []
    start = time.perf_counter()
    async with client.stream("POST", url, json=body, headers={"authorization": f"Bearer {api_key}"}) as response:
        assert response.status_code == 200, (await response.aread()).decode()
        async for chunk in response.aiter_raw():
            arrivals.append(time.perf_counter() - start)
            chunks.append(chunk)
    return StreamReads(arrivals, b"".join(chunks))


async def best_stream(read_one: Callable[[], Awaitable[StreamReads]]) -> list[StreamReads]:
    """Up to ATTEMPTS streams on one keep-alive connection, stopping at the first that streamed;
    every stream read, for the failure message."""
    await read_one()  # the connection is opened and kept alive before anything is timed
    seen: list[StreamReads] = []
    for attempt in range(ATTEMPTS):
        if attempt:
            await asyncio.sleep(PAUSE_BETWEEN_ATTEMPTS_S)
        seen.append(await read_one())
        assert seen[-1].body.rstrip().endswith(b"data: [DONE]"), seen[-1].body[-300:]
        if seen[-1].streamed():
            break
    return seen


def bunched_up(seen: list[StreamReads]) -> str:
    """The failure message: every stream read, and how busy the machine was meanwhile."""
    load = ", ".join(f"{average:.1f}" for average in os.getloadavg())
    return (f"every stream arrived bunched up (load average {load} on {os.cpu_count()} CPUs):\n"
            + "\n".join(map(str, seen)))


async def stream_reads(client_name: str, api_url: str, api_key: str, model: str) -> list[StreamReads]:
    url = f"{api_url}/chat/completions"
    body = stream_request(model)
    if client_name == "aiohttp":
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
            return await best_stream(lambda: read_with_aiohttp(session, url, api_key, body))
    async with httpx.AsyncClient(timeout=120) as client:
        return await best_stream(lambda: read_with_httpx(client, url, api_key, body))
