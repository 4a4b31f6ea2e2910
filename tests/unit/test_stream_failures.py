"""The layer that ends a failed event stream with an OpenAI error event and adds Retry-After to 503s
(issue 14, fault case 1), driven through the official openai client against a tiny ASGI app."""

from __future__ import annotations

import asyncio

import httpx
import openai
import pytest

from llm_serving.gateway.stream_failures import EngineUnavailable, StreamFailureLayer

CHUNK = (b'data: {"id":"c","object":"chat.completion.chunk","created":0,"model":"m",'
         b'"choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":null}]}\n\n')


def streaming_app(fail_with: BaseException, closes_first: bool = False):
    """An event stream that fails after one chunk; `closes_first`: as Starlette's BaseHTTPMiddleware
    does, the body is closed (empty, more_body False) before the exception is raised."""
    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream; charset=utf-8")]})
        await send({"type": "http.response.body", "body": CHUNK, "more_body": True})
        if closes_first:
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        raise fail_with
    return app


async def refusing_app(scope, receive, send):
    await send({"type": "http.response.start", "status": 503, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": b'{"error": {"message": "gone", "type": "x"}}'})


def client(app) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url="http://test/v1", api_key="k", max_retries=0,
                              http_client=httpx.AsyncClient(transport=httpx.ASGITransport(app=app)))


@pytest.mark.parametrize("closes_first", [False, True], ids=["raises", "closes-then-raises"])
@pytest.mark.parametrize("failure, status, code", [
    (EngineUnavailable("tiny-chat"), "service_unavailable_error", "engine_unavailable"),
    (RuntimeError("boom"), "api_error", "stream_failed"),
])
def test_a_stream_that_fails_midway_ends_with_an_openai_error_event(failure, status, code, closes_first):
    asyncio.run(_test_a_stream_that_fails_midway_ends_with_an_openai_error_event(failure, status, code, closes_first))


async def _test_a_stream_that_fails_midway_ends_with_an_openai_error_event(failure, status, code, closes_first):
    stream = await client(StreamFailureLayer(streaming_app(failure, closes_first))).chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi"}], stream=True)
    contents = []
    with pytest.raises(openai.APIError) as raised:
        async for chunk in stream:
            contents.append(chunk.choices[0].delta.content)
    assert contents == ["hi"]
    assert raised.value.body["type"] == status and raised.value.body["code"] == code
    assert raised.value.body["message"]


def test_a_503_from_inside_gets_retry_after():
    asyncio.run(_test_a_503_from_inside_gets_retry_after())


async def _test_a_503_from_inside_gets_retry_after():
    with pytest.raises(openai.APIStatusError) as raised:
        await client(StreamFailureLayer(refusing_app)).chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}])
    assert raised.value.status_code == 503
    assert raised.value.response.headers["retry-after"] == "5"
