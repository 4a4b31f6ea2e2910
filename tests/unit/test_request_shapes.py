"""Request-shape validation (gateway/request_shapes.py) against vLLM's own request models: every
field of a chat, completion or embedding body that can carry a wrong type is refused with a 400
naming the field, good bodies pass, and the gateway answers it before the engine is reached."""

import asyncio
import json
import statistics
import time
from pathlib import Path

import httpx
import pytest
import yaml
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from llm_serving.config import GatewayConfig
from llm_serving.gateway.errors import GatewayError
from llm_serving.gateway.middleware import build_gateway
from llm_serving.gateway.request_shapes import CHAT_PATH, COMPLETIONS_PATH, EMBEDDINGS_PATH, check_request_shape

CASES = yaml.safe_load((Path(__file__).resolve().parents[1] / "cases" / "bad_request_shapes.yaml").read_text())
PATHS = {"chat": CHAT_PATH, "completions": COMPLETIONS_PATH, "embeddings": EMBEDDINGS_PATH}
BAD_BODIES = {name: (PATHS[case["endpoint"]], case["body"], case["param"], case["says"])
              for name, case in CASES["bad"].items()}
GOOD_BODIES = {name: (PATHS[case["endpoint"]], case["body"]) for name, case in CASES["good"].items()}
GOOD_BODIES["other-paths-are-the-engines-business"] = ("/v1/score", {"anything": {"nested": True}})
CHAT = {"model": "chat", "messages": [{"role": "user", "content": "Hello"}]}


@pytest.mark.parametrize("path, body, param, word", BAD_BODIES.values(), ids=BAD_BODIES.keys())
def test_wrong_types_get_400_naming_the_field(path, body, param, word):
    sent = json.dumps(body)
    with pytest.raises(GatewayError) as refused:
        check_request_shape(path, body)
    error = refused.value
    assert error.status == 400
    assert error.param == param, error.message
    assert error.code in ("invalid_type", "invalid_value", "missing_required_parameter")
    if param is not None:
        assert f"`{param}`" in error.message
    assert word.lower() in error.message.lower(), error.message
    assert json.dumps(body) == sent  # vLLM's validators normalise in place: never the caller's body


@pytest.mark.parametrize("path, body", GOOD_BODIES.values(), ids=GOOD_BODIES.keys())
def test_good_bodies_pass(path, body):
    sent = json.dumps(body)
    check_request_shape(path, body)
    assert json.dumps(body) == sent


def test_a_typical_chat_body_costs_little_to_check():
    body = {
        "model": "chat",
        "messages": [{"role": "system", "content": "You are a helpful assistant."},
                     {"role": "user", "content": "What is the weather like in Oslo today? Answer briefly."}],
        "max_tokens": 64, "temperature": 0.7, "top_p": 0.9, "stream": True, "stream_options": {"include_usage": True},
    }
    for _ in range(200):
        check_request_shape(CHAT_PATH, body)
    # CPU time of this process: the machine is shared, and others' work must not count as ours.
    samples = []
    for _ in range(20):
        start = time.process_time()
        for _ in range(100):
            check_request_shape(CHAT_PATH, body)
        samples.append((time.process_time() - start) / 100 * 1e6)
    median_us = statistics.median(samples)
    print(f"\nrequest-shape check of a typical chat body: median {median_us:.0f} us of CPU per request")
    assert median_us < 500, median_us


async def engine(request: Request):
    return JSONResponse({"reached": "engine"})


def gateway_client():
    inner = Starlette(routes=[Route(path, engine, methods=["POST"]) for path in (CHAT_PATH, EMBEDDINGS_PATH)])
    app = build_gateway(inner, GatewayConfig(auth={"mode": "none"}), ["chat", "embed"], None)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway")


def test_the_gateway_refuses_a_nested_content_object_before_the_engine():
    async def run():
        async with gateway_client() as client:
            refused = await client.post(CHAT_PATH, json={**CHAT, "messages": [{"role": "user", "content": {"nested": True}}]})
            assert refused.status_code == 400
            assert refused.json()["error"]["param"] == "messages[0].content"
            assert refused.json()["error"]["type"] == "invalid_request_error"
            assert set(refused.json()["error"]) == {"message", "type", "param", "code"}
            passed = await client.post(CHAT_PATH, json=CHAT)
            assert passed.status_code == 200 and passed.json() == {"reached": "engine"}
            # An unknown model is still a 404, whatever the body's shape.
            assert (await client.post(CHAT_PATH, json={"model": "gpt-9", "messages": "x"})).status_code == 404

    asyncio.run(run())
