"""What the gateway measures per request: labels, timings and token counts from `usage`, and the
usage chunk it asks streams for (removed again unless the client asked for it)."""

import asyncio
import json

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from llm_serving.config import GatewayConfig
from llm_serving.gateway.api_keys import ApiKeyStore, parse_keys_document
from llm_serving.gateway.metrics import route_label
from llm_serving.gateway.middleware import build_gateway

KEYS = ApiKeyStore(parse_keys_document("keys: [{name: team-a, key: sk-team-a-000000000000}]", "test"))


async def chat(request: Request):
    """Like vLLM: a usage chunk at the end only when stream_options.include_usage is set."""
    body = json.loads(await request.body())
    if not body.get("stream"):
        return JSONResponse({"choices": [{"message": {"content": "hi"}}],
                             "usage": {"prompt_tokens": 7, "completion_tokens": 2}})
    wants_usage = (body.get("stream_options") or {}).get("include_usage")

    async def events():
        for token in ["a", "b", "c"]:
            yield f'data: {json.dumps({"choices": [{"delta": {"content": token}}]})}\n\n'
            await asyncio.sleep(0.01)
        if wants_usage:
            yield 'data: {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 3}}\n\n'
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


def run(request_body, recorded):
    app = build_gateway(Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])]),
                        GatewayConfig(auth={"mode": "none"}), ["chat"], KEYS, record=recorded.append)

    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as client:
            return await client.post("/v1/chat/completions", json=request_body,
                                     headers={"authorization": "Bearer sk-team-a-000000000000"})

    return asyncio.run(go())


def test_non_streaming_request_is_counted_with_its_usage():
    recorded = []
    response = run({"model": "chat", "messages": []}, recorded)
    assert response.status_code == 200
    (exchange,) = recorded
    assert (exchange.model, exchange.api_key, exchange.route, exchange.status) == (
        "chat", "team-a", "/v1/chat/completions", 200)
    assert (exchange.prompt_tokens, exchange.generated_tokens) == (7, 2)
    assert exchange.latency_ms > 0 and exchange.time_to_first_token_ms is None


def test_stream_usage_is_measured_and_hidden_from_a_client_that_did_not_ask():
    recorded = []
    response = run({"model": "chat", "messages": [], "stream": True}, recorded)
    events = [line for line in response.text.split("\n\n") if line]
    assert events[-1] == "data: [DONE]"
    assert not any('"usage"' in event for event in events)  # the client sees the stream it asked for
    (exchange,) = recorded
    assert (exchange.prompt_tokens, exchange.generated_tokens) == (5, 3)
    assert exchange.time_to_first_token_ms > 0
    assert len(exchange.inter_event_ms) == 2 and all(gap >= 5 for gap in exchange.inter_event_ms)


def test_stream_usage_is_kept_for_a_client_that_asked():
    recorded = []
    response = run({"model": "chat", "messages": [], "stream": True, "stream_options": {"include_usage": True}},
                   recorded)
    assert '"usage": {"prompt_tokens": 5' in response.text
    assert recorded[0].generated_tokens == 3


def test_refused_requests_are_counted_with_their_status():
    recorded = []
    assert run({"model": "missing", "messages": []}, recorded).status_code == 404
    assert (recorded[0].status, recorded[0].model) == (404, "none")


def test_route_labels_stay_bounded():
    assert route_label("/v1/models/tiny-chat") == "/v1/models"
    assert route_label("/v1/chat/completions") == "/v1/chat/completions"
    assert route_label("/admin/../../etc/passwd") == "other"
    # RAG routes by template: collection and document names would be unbounded label values.
    assert route_label("/v1/rag/collections") == "/v1/rag/collections"
    assert route_label("/v1/rag/collections/manuals") == "/v1/rag/collections/{name}"
    assert route_label("/v1/rag/collections/manuals/documents") == "/v1/rag/collections/{name}/documents"
    assert route_label("/v1/rag/collections/manuals/documents/a/b") == "/v1/rag/collections/{name}/documents/{id}"
    assert route_label("/v1/rag/collections/manuals/search") == "/v1/rag/collections/{name}/search"
    assert route_label("/v1/rag/anything") == "other"


def test_rewritten_stream_requests_carry_their_new_length():
    seen = {}

    async def length_checking_chat(request: Request):
        body = await request.body()
        seen["declared"], seen["actual"] = int(request.headers["content-length"]), len(body)
        return await chat(request)

    app = build_gateway(Starlette(routes=[Route("/v1/chat/completions", length_checking_chat, methods=["POST"])]),
                        GatewayConfig(auth={"mode": "none"}), ["chat"], None)

    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as client:
            await client.post("/v1/chat/completions", json={"model": "chat", "messages": [], "stream": True})

    asyncio.run(go())
    assert seen["declared"] == seen["actual"]


def test_requests_admitted_while_the_limits_store_is_down_are_marked_uncounted():
    """Redis unreachable: the request is answered (200) and its exchange marked, which
    GatewayMetrics counts as ray_llm_serving_limits_uncounted_requests_total{api_key}."""
    from llm_serving.gateway.traffic import TrafficControl
    from tests.e2e.servers import free_port

    gateway_config = GatewayConfig(auth={"mode": "none"})
    traffic = TrafficControl(gateway_config, ["chat"], None)
    recorded = []
    app = build_gateway(Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])]),
                        gateway_config, ["chat"], None, record=recorded.append, traffic=traffic)

    async def go():
        await traffic.reconfigure({"limits": {"redis_url": f"redis://127.0.0.1:{free_port()}/0",
                                              "default": {"requests": 1}}})
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as client:
            return [await client.post("/v1/chat/completions", json={"model": "chat", "messages": []})
                    for _ in range(3)]

    responses = asyncio.run(go())
    assert [r.status_code for r in responses] == [200, 200, 200]  # over `requests: 1`, but nothing counts
    assert [e.limits_uncounted for e in recorded] == [True, True, True]


def test_counted_requests_are_not_marked_uncounted():
    recorded = []
    run({"model": "chat", "messages": []}, recorded)
    assert recorded[0].limits_uncounted is False
