"""The gateway's traffic policy in front of a plain Starlette app standing in for the engines:
aliases, the variant header, /v1/models, 429s and reconfiguration (the e2e tests repeat these
against the real app)."""

import asyncio
import json

import httpx
import pytest
import yaml
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from llm_serving.config import GatewayConfig
from llm_serving.gateway.api_keys import ApiKeyStore
from llm_serving.gateway.middleware import build_gateway
from llm_serving.gateway.traffic import TrafficControl

MODELS = ["chat-v1", "chat-v2", "embed"]
KEY = "sk-team-a-0000000000"


async def echo(request: Request):
    body = await request.body()
    payload = json.loads(body)
    assert int(request.headers["content-length"]) == len(body)
    return JSONResponse({"model": payload["model"], "usage": {"prompt_tokens": 3, "completion_tokens": 4}})


async def models(request: Request):
    return JSONResponse({"object": "list", "data": [{"id": m, "object": "model", "created": 1} for m in MODELS]})


def gateway(tmp_path, traffic_config, inner=None, record=None):
    keys_file = tmp_path / "keys.yaml"
    keys_file.write_text(yaml.safe_dump({"keys": [{"name": "team-a", "key": KEY}]}))
    config = GatewayConfig(auth={"mode": "api_key", "api_keys": {"file": str(keys_file)}})
    store = ApiKeyStore.from_config(config.auth.api_keys)
    control = TrafficControl(config, MODELS, store)
    asyncio.run(control.reconfigure(traffic_config))
    if inner is None:
        inner = Starlette(routes=[Route("/v1/chat/completions", echo, methods=["POST"]), Route("/v1/models", models)])
    return build_gateway(inner, config, MODELS, store, traffic=control, record=record), control, keys_file


def request(app, method, path, body=None, headers=None, key=KEY):
    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as client:
            return await client.request(method, path, json=body,
                                        headers={"authorization": f"Bearer {key}", **(headers or {})})

    return asyncio.run(go())


def chat(app, model="chat", **extra):
    return request(app, "POST", "/v1/chat/completions", {"model": model, "messages": [], **extra.pop("body", {})},
                   **extra)


CANARY = {"aliases": {"chat": {"variants": {"chat-v1": 50, "chat-v2": 50}}}}


def test_alias_resolves_to_a_variant_named_in_the_header(tmp_path):
    app, _, _ = gateway(tmp_path, CANARY)
    seen = set()
    for i in range(40):
        response = chat(app, headers={"x-session-id": f"s{i}"})
        assert response.status_code == 200
        assert response.json()["model"] == response.headers["x-llm-serving-variant"]
        seen.add(response.headers["x-llm-serving-variant"])
    assert seen == {"chat-v1", "chat-v2"}
    # A served model by its own name: no header, unchanged.
    direct = chat(app, model="embed")
    assert direct.json()["model"] == "embed" and "x-llm-serving-variant" not in direct.headers


def test_sticky_by_session_header_then_user(tmp_path):
    app, _, _ = gateway(tmp_path, CANARY)
    for i in range(10):
        variants = {chat(app, headers={"x-session-id": f"s{i}"}).headers["x-llm-serving-variant"] for _ in range(4)}
        assert len(variants) == 1
        by_user = {chat(app, body={"user": f"u{i}"}).headers["x-llm-serving-variant"] for _ in range(4)}
        assert len(by_user) == 1


def test_models_list_includes_aliases(tmp_path):
    app, _, _ = gateway(tmp_path, CANARY)
    listed = request(app, "GET", "/v1/models").json()
    assert [m["id"] for m in listed["data"]] == [*MODELS, "chat"]


def test_an_alias_can_be_retrieved_like_a_model(tmp_path):
    app, _, _ = gateway(tmp_path, CANARY)
    card = request(app, "GET", "/v1/models/chat").json()
    assert card == {"id": "chat", "object": "model", "owned_by": "llm-serving-alias"}
    listed = request(app, "GET", "/v1/models").json()["data"]
    assert [m for m in listed if m["id"] == "chat"] == [card]
    assert request(app, "GET", "/v1/models/chat", key="sk-wrong-000000000000").status_code == 401


def test_rag_routes_count_against_the_keys_limits(tmp_path):
    app, _, _ = gateway(tmp_path, {"limits": {"window_seconds": 3600, "keys": {"team-a": {"requests": 2}}}})
    # No RAG layer inside this test app: an admitted request reaches it and gets its 404.
    statuses = [request(app, "POST", "/v1/rag/collections", {"name": "docs"}).status_code,
                request(app, "GET", "/v1/rag/collections").status_code,
                request(app, "POST", "/v1/rag/collections", {"name": "docs"}).status_code]
    assert statuses == [404, 404, 429]


def test_limits_answer_429_with_retry_after(tmp_path):
    app, _, _ = gateway(tmp_path, {"limits": {"window_seconds": 3600, "keys": {"team-a": {"requests": 2}}}})
    assert [chat(app, model="embed").status_code for _ in range(2)] == [200, 200]
    refused = chat(app, model="embed")
    assert refused.status_code == 429
    assert int(refused.headers["retry-after"]) >= 1
    error = refused.json()["error"]
    assert error["code"] == "rate_limit_exceeded" and error["type"] == "rate_limit_error"
    assert "team-a" in error["message"] and "2 requests per 3600 s" in error["message"]


def test_a_refused_alias_request_still_names_its_variant(tmp_path):
    app, _, _ = gateway(tmp_path, {**CANARY, "limits": {"window_seconds": 3600, "keys": {"team-a": {"requests": 1}}}})
    assert chat(app).status_code == 200
    refused = chat(app)
    assert refused.status_code == 429 and refused.headers["x-llm-serving-variant"] in {"chat-v1", "chat-v2"}


def test_token_limit_settles_from_usage(tmp_path):
    app, _, _ = gateway(tmp_path, {"limits": {"window_seconds": 3600, "default": {"tokens": 14}}})
    # Each answer uses 3 + 4 = 7 tokens: two fit, the third is refused.
    statuses = [chat(app, model="embed", body={"max_tokens": 4}).status_code for _ in range(3)]
    assert statuses == [200, 200, 429]


def test_bad_reconfiguration_keeps_the_old_config(tmp_path):
    app, control, _ = gateway(tmp_path, CANARY)
    asyncio.run(control.reconfigure({"aliases": {"chat": {"variants": {"chat-v3": 100}}}}))
    assert "chat-v3 not served" in control.rejected
    assert "previous one stays in force" in control.rejected
    assert chat(app).headers["x-llm-serving-variant"] in {"chat-v1", "chat-v2"}
    ready = request(app, "GET", "/readyz").json()
    assert ready["traffic"]["rejected"] == control.rejected
    # A good one applies and clears the rejection.
    asyncio.run(control.reconfigure({"aliases": {"chat": {"variants": {"chat-v2": 1}}}}))
    assert control.rejected is None
    assert chat(app).headers["x-llm-serving-variant"] == "chat-v2"


def test_first_config_of_a_replica_is_raised(tmp_path):
    with pytest.raises(ValueError, match="traffic.aliases.chat.variants.chat-v1: Input should be greater than or equal to 0"):
        gateway(tmp_path, {"aliases": {"chat": {"variants": {"chat-v1": -1}}}})
    with pytest.raises(ValueError, match="traffic.aliases.embed: the alias has the name of a served model"):
        gateway(tmp_path, {"aliases": {"embed": {"variants": {"chat-v1": 1}}}})


def test_keys_revision_rereads_the_keys(tmp_path):
    app, control, keys_file = gateway(tmp_path, {"keys_revision": "1"})
    new_key = "sk-team-b-0000000000"
    keys_file.write_text(yaml.safe_dump({"keys": [{"name": "team-b", "key": new_key}]}))
    assert chat(app, model="embed", key=new_key).status_code == 401
    asyncio.run(control.reconfigure({"keys_revision": "2"}))
    assert chat(app, model="embed", key=new_key).status_code == 200
    assert chat(app, model="embed").status_code == 401
    # A broken keys document is rejected; the keys in force stay.
    keys_file.write_text("keys: [{name: x}]")
    asyncio.run(control.reconfigure({"keys_revision": "3"}))
    assert "needs exactly one of `key` or `sha256`" in control.rejected
    assert chat(app, model="embed", key=new_key).status_code == 200


class RecordingEngines:
    """An inner app that records every request body it gets; chat-v2 waits for `release` when held."""

    def __init__(self):
        self.bodies = []
        self.release = asyncio.Event()
        self.hold_v2 = False

    async def chat(self, request: Request):
        payload = json.loads(await request.body())
        self.bodies.append(payload)
        if payload["model"] == "chat-v2" and self.hold_v2:
            await self.release.wait()
        return JSONResponse({"model": payload["model"], "usage": {"prompt_tokens": 3, "completion_tokens": 4}})


def shadow_gateway(tmp_path, traffic_config):
    engines, exchanges = RecordingEngines(), []
    inner = Starlette(routes=[Route("/v1/chat/completions", engines.chat, methods=["POST"])])
    app, _, _ = gateway(tmp_path, traffic_config, inner=inner, record=exchanges.append)
    return app, engines, exchanges


def run_chats(app, count, body=None, settle=None):
    """`count` alias requests in one event loop, then let the background copies finish."""
    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as client:
            responses = await asyncio.gather(*[
                client.post("/v1/chat/completions", json={"model": "chat", "messages": [], **(body or {})},
                            headers={"authorization": f"Bearer {KEY}"})
                for _ in range(count)])
            if settle is not None:
                await settle()
            await asyncio.sleep(0.05)
            return responses

    return asyncio.run(go())


SHADOWED = {"aliases": {"chat": {"variants": {"chat-v1": 1}, "shadow": {"variant": "chat-v2", "percent": 100}}}}


def test_shadow_copies_go_to_the_shadow_model_and_their_answers_are_dropped(tmp_path):
    app, engines, exchanges = shadow_gateway(tmp_path, SHADOWED)
    responses = run_chats(app, 3, body={"stream": True, "stream_options": {"include_usage": False}, "user": "u1"})
    assert [r.json()["model"] for r in responses] == ["chat-v1"] * 3  # clients only see their variant
    copies = [b for b in engines.bodies if b["model"] == "chat-v2"]
    assert len(copies) == 3
    assert all("stream" not in c and "stream_options" not in c and c["user"] == "u1" for c in copies)
    shadows = [e for e in exchanges if e.shadow]
    assert [(e.model, e.variant, e.status) for e in shadows] == [("chat", "chat-v2", 200)] * 3


@pytest.mark.parametrize("traffic_config", [
    {"aliases": {"chat": {"variants": {"chat-v1": 1}, "shadow": {"variant": "chat-v2", "percent": 0}}}},
    {"aliases": {"chat": {"variants": {"chat-v2": 1}, "shadow": {"variant": "chat-v2", "percent": 100}}}},
], ids=["zero-percent", "shadow-is-the-served-variant"])
def test_no_shadow_copy(tmp_path, traffic_config):
    app, engines, _ = shadow_gateway(tmp_path, traffic_config)
    run_chats(app, 4)
    assert len(engines.bodies) == 4


def test_shadow_copies_are_outside_the_callers_limits(tmp_path):
    app, engines, _ = shadow_gateway(tmp_path, {**SHADOWED, "limits": {"keys": {"team-a": {"requests": 2}}}})
    statuses = sorted(r.status_code for r in run_chats(app, 3))
    assert statuses == [200, 200, 429]
    assert sorted(b["model"] for b in engines.bodies) == ["chat-v1", "chat-v1", "chat-v2", "chat-v2"]


def test_shadow_copies_beyond_the_cap_are_dropped_not_queued(tmp_path):
    from llm_serving.gateway.middleware import MAX_SHADOWS_IN_FLIGHT

    app, engines, exchanges = shadow_gateway(tmp_path, SHADOWED)
    engines.hold_v2 = True

    async def release():
        engines.release.set()

    responses = run_chats(app, MAX_SHADOWS_IN_FLIGHT + 5, settle=release)
    assert all(r.status_code == 200 for r in responses)  # held copies never delay the clients
    statuses = sorted(e.status for e in exchanges if e.shadow)
    assert statuses == [0] * 5 + [200] * MAX_SHADOWS_IN_FLIGHT


def test_a_copy_cancelled_unanswered_is_counted_as_dropped_not_lost(tmp_path):
    app, engines, exchanges = shadow_gateway(tmp_path, SHADOWED)
    engines.hold_v2 = True  # never released: the loop's end cancels the copies, as a stopping replica does
    assert [r.status_code for r in run_chats(app, 2)] == [200, 200]
    assert [e.status for e in exchanges if e.shadow] == [0, 0]


def test_shadow_model_must_be_served(tmp_path):
    bad = {"aliases": {"chat": {"variants": {"chat-v1": 1}, "shadow": {"variant": "chat-v9", "percent": 5}}}}
    with pytest.raises(ValueError, match=r"traffic\.aliases\.chat\.shadow\.variant: chat-v9 not served"):
        shadow_gateway(tmp_path, bad)
