"""Several models on the direct-streaming path (gateway.direct_model): the config rules that name the
fix, the topology chosen, and what the direct model's replica sends where. Two plain Starlette apps
stand in for vLLM's app in the replica and for the other models' engine calls; tests/e2e/
test_direct_streaming.py runs the same with real engines."""

import asyncio
import json

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import llm_serving.app as app_module
from llm_serving.app import direct_model_name, uses_direct_streaming
from llm_serving.config import ConfigError, GatewayConfig, parse_app_config
from llm_serving.gateway.middleware import build_gateway
from llm_serving.gateway.model_dispatch import LocalModelRoutes, ModelDispatch

MODELS = {"chat": {"source": "org/chat"}, "embed": {"source": "org/embed", "task": "embed"}}


def two_models(**gateway):
    return {"models": MODELS, "gateway": {"auth": {"mode": "none"}, **gateway}}


@pytest.fixture
def haproxy(monkeypatch):
    monkeypatch.setattr(app_module, "RAY_SERVE_ENABLE_HA_PROXY", True)


def test_several_models_take_the_direct_path_only_with_a_direct_model(haproxy):
    assert not uses_direct_streaming(parse_app_config(two_models()))
    config = parse_app_config(two_models(direct_model="chat"))
    assert uses_direct_streaming(config) and direct_model_name(config) == "chat"


RAG = {"rag": {"store": {"uri": "/d/m.db"}}}
BATCH = {"batch": {"store_uri": "/tmp/b"}}


@pytest.mark.parametrize("features", [RAG, BATCH, {**RAG, **BATCH}], ids=["rag", "batch", "rag+batch"])
def test_rag_and_batch_run_in_the_direct_replica_only_when_direct_model_asks(haproxy, features):
    assert uses_direct_streaming(parse_app_config({**two_models(direct_model="chat"), **features}))
    assert not uses_direct_streaming(parse_app_config({**two_models(), **features}))
    # One model keeps them in the gateway deployment unless it is named direct_model too.
    one_model = {"models": {"embed": MODELS["embed"]}, "gateway": {"auth": {"mode": "none"}}}
    assert not uses_direct_streaming(parse_app_config({**one_model, **features}))
    one_model["gateway"]["direct_model"] = "embed"
    assert uses_direct_streaming(parse_app_config({**one_model, **features}))


def test_without_haproxy_the_direct_model_goes_through_the_gateway_deployment(monkeypatch):
    monkeypatch.setattr(app_module, "RAY_SERVE_ENABLE_HA_PROXY", False)
    assert not uses_direct_streaming(parse_app_config(two_models(direct_model="chat")))


@pytest.mark.parametrize(
    "extra, expected",
    [
        ({"gateway": {"auth": {"mode": "none"}, "direct_model": "other"}}, r"'other' is not one of the models; choose one of: chat, embed"),
        ({"gateway": {"auth": {"mode": "none"}, "direct_model": "chat", "direct_streaming": False}},
         r"direct_model needs gateway.direct_streaming: true"),
        ({"gateway": {"auth": {"mode": "none"}, "direct_model": "chat"},
          "models": {**MODELS, "chat": {"source": "org/chat", "autoscaling": {"min_replicas": 0}}}},
         r"'chat' scales to zero, but its replicas are the ingress"),
        ({"gateway": {"auth": {"mode": "none"}, "direct_model": "chat"},
          "models": {**MODELS, "chat": {"source": "org/chat", "lora": {"source": "/adapters"}}}},
         r"cannot be used with LoRA models"),
    ],
)
def test_a_direct_model_that_cannot_be_the_ingress_names_the_fix(extra, expected):
    with pytest.raises(ConfigError, match=expected):
        parse_app_config({"models": MODELS, **extra})


async def answer_as(name: str, request: Request):
    body = await request.body()
    return JSONResponse({"served_by": name, "model": json.loads(body).get("model") if body else None})


def stand_in(name: str) -> Starlette:
    async def endpoint(request: Request):
        return await answer_as(name, request)

    paths = ["/v1/chat/completions", "/v1/completions", "/v1/embeddings"]
    return Starlette(routes=[Route(path, endpoint, methods=["POST"]) for path in paths]
                     + [Route("/v1/models", endpoint), Route("/tokenize", endpoint, methods=["POST"])])


CARDS = {"chat": {"id": "chat", "object": "model"}, "embed": {"id": "embed", "object": "model"}}


def replica_client(traffic=None):
    """The direct model's replica as server.GatewayLLMServer builds it: gateway(dispatch(vLLM, others))."""
    dispatch = ModelDispatch("chat", stand_in("vllm-in-replica"), stand_in("engine-calls"), CARDS)
    app = build_gateway(dispatch, GatewayConfig(auth={"mode": "none"}), ["chat", "embed"], None, traffic=traffic)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://replica")


async def requests_of_each_kind():
    async with replica_client() as client:
        chat = await client.post("/v1/chat/completions", json={"model": "chat", "messages": [{"role": "user", "content": "hi"}]})
        embed = await client.post("/v1/embeddings", json={"model": "embed", "input": "hi"})
        listing = await client.get("/v1/models")
        card = await client.get("/v1/models/embed")
        unknown = await client.get("/v1/models/nope")
        tokenize = await client.post("/tokenize", json={"model": "chat", "prompt": "hi"})
    return chat, embed, listing, card, unknown, tokenize


def test_the_direct_model_is_served_in_the_replica_and_the_others_over_handles():
    chat, embed, listing, card, unknown, tokenize = asyncio.run(requests_of_each_kind())
    assert chat.json() == {"served_by": "vllm-in-replica", "model": "chat"}
    assert embed.json() == {"served_by": "engine-calls", "model": "embed"}
    assert tokenize.json()["served_by"] == "vllm-in-replica"
    assert listing.json() == {"object": "list", "data": [CARDS["chat"], CARDS["embed"]]}
    assert card.json() == CARDS["embed"]
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "model_not_found"
    assert unknown.json()["error"]["message"].endswith("Available models: chat, embed.")


def test_prefix_routing_of_another_model_keeps_the_direct_path(haproxy, monkeypatch):
    # Handles carry the prompt to the affinity router; only the direct model's HAProxy route lacks it.
    monkeypatch.setattr(app_module, "RAY_SERVE_INGRESS_REQUEST_ROUTER_FORWARD_BODY", False)
    affinity = {"request_router": {"policy": "prefix_cache_affinity"}}
    gateway = {"auth": {"mode": "none"}, "direct_model": "chat"}
    other_has_it = {"chat": {"source": "org/chat"}, "big": {"source": "org/big", **affinity}}
    direct_has_it = {"chat": {"source": "org/chat", **affinity}, "big": {"source": "org/big"}}
    assert uses_direct_streaming(parse_app_config({"models": other_has_it, "gateway": gateway}))
    assert not uses_direct_streaming(parse_app_config({"models": direct_has_it, "gateway": gateway}))


def chat_replica_routes():
    chat_app = stand_in("vllm-in-replica")
    post_paths = [route.path for route in chat_app.routes if "POST" in route.methods]
    post_paths.remove("/v1/embeddings")  # a generate model's vLLM app has no embeddings route
    return LocalModelRoutes("chat", chat_app, post_paths)


async def local_requests():
    transport = httpx.ASGITransport(app=chat_replica_routes())
    async with httpx.AsyncClient(transport=transport, base_url="http://replica") as client:
        embed = await client.post("/v1/embeddings", json={"model": "chat", "input": "hi"})
        chat = await client.post("/v1/chat/completions", json={"model": "chat", "messages": []})
        listing = await client.get("/v1/models")
    return embed, chat, listing


def test_a_route_the_direct_model_lacks_gets_a_400_naming_what_it_serves():
    embed, chat, listing = asyncio.run(local_requests())
    assert embed.status_code == 400
    assert embed.json()["error"]["message"] == (
        "The model `chat` does not support /v1/embeddings; it serves /v1/chat/completions, /v1/completions, "
        "/tokenize."
    )
    assert chat.json()["served_by"] == "vllm-in-replica"
    assert listing.json()["served_by"] == "vllm-in-replica"
