"""Streams reach keep-alive clients token by token on the gateway deployment path (the shared
dev-cpu instance); tests/e2e/test_direct_streaming.py checks the same on the direct-streaming path.
Issue 17: aiohttp was seen getting whole streams in one read. See tests/e2e/stream_reads.py."""

import asyncio

import pytest

from tests.e2e.dev_cpu import CHAT_MODEL, FULL_KEY
from tests.e2e.stream_reads import bunched_up, stream_reads

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("client_name", ["aiohttp", "httpx"])
def test_a_stream_arrives_in_many_reads_through_the_gateway(gateway, client_name):
    seen = asyncio.run(stream_reads(client_name, gateway.api_url, FULL_KEY, CHAT_MODEL))
    assert seen[-1].streamed(), bunched_up(seen)
