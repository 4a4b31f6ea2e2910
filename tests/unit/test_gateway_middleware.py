"""The gateway's decisions (auth, body, model, readiness, CORS, error shape) in front of a plain
Starlette app standing in for the engine; the end-to-end tests repeat them against real engines."""

import asyncio
import json

import httpx
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from llm_serving.config import GatewayConfig
from llm_serving.gateway.api_keys import ApiKeyStore, parse_keys_document
from llm_serving.gateway.middleware import build_gateway

KEYS = ApiKeyStore(
    parse_keys_document(
        "keys: [{name: all, key: sk-all-models-000000}, {name: chat-only, key: sk-chat-only-0000000, models: [chat]}]",
        "test",
    )
)


async def echo(request: Request):
    body = await request.body()
    return JSONResponse({"received": json.loads(body) if body else None})


async def inner_error(request: Request):
    return JSONResponse(
        {"error": {"message": "Message: max_tokens must be at least 1 (Request ID: 42), Internal exception: X",
                   "type": "OpenAIHTTPException", "param": None, "code": 400}},
        status_code=400,
        headers={"x-request-id": "42"},
    )


def inner_app():
    # Like vLLM's app: a permissive CORS policy that the gateway must override.
    return Starlette(
        routes=[Route("/v1/chat/completions", echo, methods=["POST"]), Route("/v1/models", echo),
                Route("/v1/fail", inner_error, methods=["POST"])],
        middleware=[Middleware(CORSMiddleware, allow_origins=["*"])],
    )


def client(models=("chat", "embed"), key_store=KEYS, readiness=None, **gateway):
    app = build_gateway(inner_app(), GatewayConfig(auth={"mode": "none"}, **gateway), list(models), key_store, readiness)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway")


def call(coroutine):
    return asyncio.run(coroutine)


async def post(c, body, key="sk-all-models-000000", path="/v1/chat/completions", headers=None):
    headers = {"content-type": "application/json", **(headers or {})}
    if key:
        headers["authorization"] = f"Bearer {key}"
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return await c.post(path, content=content, headers=headers)


def assert_openai_error(response, status, code):
    assert response.status_code == status
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code
    return error


@pytest.mark.parametrize(
    "key, status, code",
    [(None, 401, "missing_api_key"), ("sk-wrong-000000000000", 401, "invalid_api_key")],
)
def test_requests_without_a_valid_key_get_401(key, status, code):
    async def run():
        async with client() as c:
            response = await post(c, {"model": "chat"}, key=key)
            assert_openai_error(response, status, code)
            assert response.headers["www-authenticate"] == "Bearer"
            assert (await c.get("/v1/models")).status_code == 401

    call(run())


def test_valid_key_passes_the_body_through_unchanged():
    async def run():
        async with client() as c:
            response = await post(c, {"model": "chat", "messages": [{"role": "user", "content": "hi"}]})
            assert response.status_code == 200
            assert response.json()["received"]["messages"][0]["content"] == "hi"

    call(run())


def test_key_restricted_to_other_models_gets_403_naming_what_it_may_use():
    async def run():
        async with client() as c:
            error = assert_openai_error(await post(c, {"model": "embed"}, key="sk-chat-only-0000000"), 403, "model_not_allowed")
            assert "Allowed models: chat" in error["message"]

    call(run())


def test_unknown_model_gets_404_listing_the_models():
    async def run():
        async with client() as c:
            error = assert_openai_error(await post(c, {"model": "gpt-9"}), 404, "model_not_found")
            assert error["message"].endswith("Available models: chat, embed.")
            assert error["type"] == "not_found_error"

    call(run())


@pytest.mark.parametrize(
    "body, code",
    [(b"{not json", "invalid_json"), (b"[1, 2]", "invalid_json"), ({"model": 7}, "invalid_type"),
     ({"messages": []}, "missing_model")],
)
def test_malformed_bodies_get_400(body, code):
    async def run():
        async with client() as c:
            assert_openai_error(await post(c, body), 400, code)

    call(run())


def test_single_model_deployments_default_the_model():
    async def run():
        async with client(models=["chat"]) as c:
            assert (await post(c, {"messages": []})).status_code == 200

    call(run())


def test_oversized_bodies_get_413_by_declared_and_by_actual_length():
    async def run():
        async with client(max_request_bytes=1024) as c:
            big = {"model": "chat", "pad": "x" * 2000}
            assert_openai_error(await post(c, big), 413, "request_too_large")

            async def chunks():  # no content-length: the limit applies while reading
                yield b'{"model": "chat", "pad": "'
                for _ in range(4):
                    yield b"x" * 500
                yield b'"}'

            response = await c.post(
                "/v1/chat/completions",
                content=chunks(),
                headers={"content-type": "application/json", "authorization": "Bearer sk-all-models-000000"},
            )
            assert_openai_error(response, 413, "request_too_large")

    call(run())


def test_model_not_ready_gets_503_with_retry_after_and_readyz_says_which():
    readiness = {"chat": True, "embed": False}

    async def run():
        async with client(readiness=lambda: readiness) as c:
            response = await post(c, {"model": "embed", "input": "x"})
            assert_openai_error(response, 503, "model_not_ready")
            assert int(response.headers["retry-after"]) > 0
            assert (await post(c, {"model": "chat", "messages": []})).status_code == 200
            ready = await c.get("/readyz")
            assert ready.status_code == 503 and ready.json()["models"] == readiness
            readiness["embed"] = True
            assert (await c.get("/readyz")).status_code == 200
            assert (await c.get("/healthz")).status_code == 200

    call(run())


def test_inner_error_bodies_are_rewritten_into_openai_shape():
    async def run():
        async with client() as c:
            response = await post(c, {"model": "chat"}, path="/v1/fail")
            error = assert_openai_error(response, 400, None)
            assert error == {"message": "max_tokens must be at least 1", "type": "invalid_request_error",
                             "param": None, "code": None}
            # The rest of the inner app's answer stays; its length is the rewritten body's.
            assert response.headers["x-request-id"] == "42"
            assert int(response.headers["content-length"]) == len(response.content)

    call(run())


def test_cors_is_closed_by_default_even_though_the_inner_app_allows_all():
    async def run():
        async with client() as c:
            response = await c.get("/v1/models", headers={"origin": "https://evil.example",
                                                          "authorization": "Bearer sk-all-models-000000"})
            assert "access-control-allow-origin" not in response.headers
            preflight = await c.options("/v1/models", headers={"origin": "https://evil.example",
                                                                "access-control-request-method": "POST"})
            assert preflight.status_code == 400

    call(run())


def test_cors_allows_configured_origins_only():
    async def run():
        async with client(cors_allow_origins=["https://app.example"]) as c:
            preflight = await c.options("/v1/chat/completions", headers={
                "origin": "https://app.example", "access-control-request-method": "POST",
                "access-control-request-headers": "authorization,content-type"})
            assert preflight.status_code == 200
            assert preflight.headers["access-control-allow-origin"] == "https://app.example"
            response = await post(c, {"model": "chat"}, headers={"origin": "https://app.example"})
            assert response.headers["access-control-allow-origin"] == "https://app.example"

    call(run())


def test_an_engine_back_pressure_503_gets_retry_after_and_openai_shape():
    """Ray Serve refuses a request over a model's max_queued_requests with BackPressureError, which
    Ray Serve LLM's ingress answers as this 503 body, without Retry-After."""
    async def back_pressure(request: Request):
        message = ("Message: Request dropped due to backpressure (num_queued_requests=2, max_queued_requests=2). "
                   "(Request ID: 7), Internal exception: BackPressureError")
        return JSONResponse({"error": {"message": message, "type": "BackPressureError", "param": None, "code": 503}},
                            status_code=503)

    inner = Starlette(routes=[Route("/v1/chat/completions", back_pressure, methods=["POST"])])
    app = build_gateway(inner, GatewayConfig(auth={"mode": "none"}), ["chat"], None)

    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway") as c:
            return await post(c, {"model": "chat", "messages": []}, key=None)

    response = call(go())
    error = assert_openai_error(response, 503, None)
    assert response.headers["retry-after"] == "1"
    assert error["message"] == "Request dropped due to backpressure (num_queued_requests=2, max_queued_requests=2)."
