"""LoRA adapters: the `lora` settings and what they become in Ray Serve LLM's and vLLM's config, the
adapter catalog, and the gateway's decisions on `<model>:<adapter>` (exists, key allowed, metrics
label) in front of a plain app; tests/e2e/test_lora.py repeats them against real engines."""

import asyncio
import json

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from llm_serving.app import to_llm_config, uses_direct_streaming
from llm_serving.builtin_models import BUILTIN_ADAPTERS, TINY_CHAT_ADAPTERS, write_tiny_chat_adapter, write_tiny_chat_adapters
from llm_serving.config import BUILTIN_ADAPTER_FOLDERS, ConfigError, GatewayConfig, parse_app_config
from llm_serving.gateway.api_keys import ApiKeyStore, parse_keys_document
from llm_serving.gateway.middleware import build_gateway
from llm_serving.lora import ADAPTER_LISTING_TTL_S, AdapterCatalog, list_adapters, split_adapter

NO_AUTH = {"auth": {"mode": "none"}}


def lora_args(lora, name="chat", **model):
    return {"models": {name: {"source": "org/base", "lora": lora, **model}}, "gateway": NO_AUTH}


def test_lora_maps_onto_ray_serve_llm_and_the_engine():
    config = parse_app_config(lora_args({"source": "s3://bucket/adapters/", "max_adapters_per_replica": 8,
                                         "max_rank": 64, "download_timeout_s": 120}))
    llm_config = to_llm_config("chat", config.models["chat"])
    assert llm_config.lora_config.dynamic_lora_loading_path == "s3://bucket/adapters"
    assert llm_config.lora_config.max_num_adapters_per_replica == 8
    assert llm_config.lora_config.download_timeout_s == 120
    assert llm_config.multiplex_config().max_num_models_per_replica == 8  # Serve's multiplexing is on
    assert {k: llm_config.engine_kwargs[k] for k in ("enable_lora", "max_lora_rank", "max_loras")} == {
        "enable_lora": True, "max_lora_rank": 64, "max_loras": 8}


def test_a_local_folder_is_not_given_to_ray_which_takes_cloud_prefixes_only():
    config = parse_app_config(lora_args({"source": "/adapters"}))
    llm_config = to_llm_config("chat", config.models["chat"])
    assert llm_config.lora_config.dynamic_lora_loading_path is None
    assert llm_config.multiplex_config() is not None
    assert "enable_lora" not in to_llm_config("plain", parse_app_config(
        {"models": {"plain": {"source": "org/base"}}, "gateway": NO_AUTH}).models["plain"]).engine_kwargs


def test_lora_models_do_not_take_the_direct_streaming_path(monkeypatch):
    monkeypatch.setattr("llm_serving.app.RAY_SERVE_ENABLE_HA_PROXY", True)  # as on a cluster with the fast path
    assert uses_direct_streaming(parse_app_config({"models": {"chat": {"source": "org/base"}}, "gateway": NO_AUTH}))
    assert not uses_direct_streaming(parse_app_config(lora_args({"source": "/adapters"})))


@pytest.mark.parametrize(
    "args, message",
    [
        (lora_args({"source": "adapters/"}), "models.chat.lora.source: lora.source 'adapters/' is not an adapters "
                                             "folder; use an s3://"),
        (lora_args({"source": "/a", "max_rank": 12}), "models.chat.lora.max_rank: Input should be 1, 8, 16"),
        (lora_args({"source": "/a", "max_adapters_per_replica": 0}), "models.chat.lora.max_adapters_per_replica"),
        (lora_args({"source": "/a", "path": "/b"}), "models.chat.lora.path: unknown key"),
        (lora_args({"source": "/a"}, task="embed"), "lora applies to task: generate"),
        (lora_args({"source": "/a"}, engine_kwargs={"max_loras": 2}),
         "engine_kwargs.max_loras is set by the app; set lora.max_adapters_per_replica instead"),
        (lora_args({"source": "/a"}, name="org:chat"), "model 'org:chat' has lora but its name has a ':'"),
    ],
)
def test_bad_lora_settings_name_the_key_and_the_fix(args, message):
    with pytest.raises(ConfigError) as error:
        parse_app_config(args)
    assert message in str(error.value)


def test_builtin_adapter_folders_are_the_ones_builtin_models_makes():
    assert set(BUILTIN_ADAPTER_FOLDERS) == set(BUILTIN_ADAPTERS)
    parse_app_config(lora_args({"source": "builtin://tiny-chat-adapters"}))
    with pytest.raises(ConfigError, match="builtin://nope"):
        parse_app_config(lora_args({"source": "builtin://nope"}))


def test_split_adapter_as_ray_serve_llm_does():
    assert split_adapter("chat:lora-a") == ("chat", "lora-a")
    assert split_adapter("chat") == ("chat", None)


def test_tiny_adapters_are_peft_files_vllm_reads(tmp_path):
    from safetensors.torch import load_file
    from vllm.lora.peft_helper import PEFTHelper

    write_tiny_chat_adapters(tmp_path)
    assert list_adapters(str(tmp_path)) == sorted(TINY_CHAT_ADAPTERS)
    config = json.loads((tmp_path / "lora-a" / "adapter_config.json").read_text())
    assert PEFTHelper.from_dict(config).r == 8
    a, b = (load_file(str(tmp_path / name / "adapter_model.safetensors")) for name in ("lora-a", "lora-b"))
    key = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"
    assert a[key].abs().sum() > 0  # non-zero lora_B: the adapter changes the outputs
    assert not a[key].equal(b[key])  # seeded differently
    write_tiny_chat_adapter(tmp_path / "again", seed=TINY_CHAT_ADAPTERS["lora-a"])
    assert load_file(str(tmp_path / "again" / "adapter_model.safetensors"))[key].equal(a[key])  # and repeatably


def test_catalog_lists_each_model_at_most_once_per_ttl():
    now, calls = [0.0], []

    def lister(source):
        calls.append(source)
        return ["a", "b"]

    catalog = AdapterCatalog({"chat": "/adapters"}, lister=lister, clock=lambda: now[0])
    assert asyncio.run(catalog.adapters("chat")) == ["a", "b"]
    assert asyncio.run(catalog.adapters("chat")) == ["a", "b"]
    assert asyncio.run(catalog.adapters("embed")) == []
    now[0] += ADAPTER_LISTING_TTL_S
    asyncio.run(catalog.adapters("chat"))
    assert calls == ["/adapters", "/adapters"]


# The gateway in front of a plain app standing in for the engines.

KEYS = ApiKeyStore(parse_keys_document(
    "keys: [{name: all, key: sk-all-models-000000}, {name: chat, key: sk-chat-and-adapters-0, models: [chat]},"
    " {name: only-a, key: sk-only-adapter-a-000, models: ['chat:a']}]", "test"))


async def echo(request: Request):
    return JSONResponse({"received": json.loads(await request.body())})


def gateway(recorded):
    app = build_gateway(Starlette(routes=[Route("/v1/chat/completions", echo, methods=["POST"])]),
                        GatewayConfig(auth={"mode": "none"}), ["chat", "embed"], KEYS, record=recorded.append,
                        adapters=AdapterCatalog({"chat": "/adapters"}, lister=lambda source: ["a", "b"]))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway")


def post(model, key="sk-all-models-000000"):
    recorded = []

    async def send():
        async with gateway(recorded) as c:
            return await c.post("/v1/chat/completions", json={"model": model, "messages": []},
                                headers={"authorization": f"Bearer {key}"})

    return asyncio.run(send()), recorded


def test_an_adapter_request_reaches_the_engine_as_sent_and_is_labelled():
    response, (exchange,) = post("chat:a")
    assert response.status_code == 200
    assert response.json()["received"]["model"] == "chat:a"  # Ray Serve LLM routes it by this name
    assert (exchange.model, exchange.variant, exchange.adapter) == ("chat", "chat", "a")
    _, (plain,) = post("chat")
    assert plain.adapter == "none"


def test_unknown_adapter_is_404_naming_the_adapters_that_exist():
    response, _ = post("chat:c")
    assert response.status_code == 404
    assert response.json()["error"]["message"] == (
        "The adapter `c` of model `chat` does not exist. Available adapters: chat:a, chat:b.")
    # A model without lora has no adapters: `embed:x` is an unknown model, as before.
    assert post("embed:x")[0].json()["error"]["message"].startswith("The model `embed:x` does not exist.")


@pytest.mark.parametrize(
    "key, model, status",
    [
        ("sk-chat-and-adapters-0", "chat:b", 200),  # the model's entry allows its adapters
        ("sk-chat-and-adapters-0", "chat", 200),
        ("sk-only-adapter-a-000", "chat:a", 200),
        ("sk-only-adapter-a-000", "chat:b", 403),  # an adapter's entry allows only that adapter
        ("sk-only-adapter-a-000", "chat", 403),
        ("sk-chat-and-adapters-0", "embed", 403),
    ],
)
def test_keys_may_be_limited_to_adapters(key, model, status):
    response, _ = post(model, key)
    assert response.status_code == status, response.text
    if status == 403:
        assert response.json()["error"]["message"].endswith(
            "Allowed models: chat:a." if key == "sk-only-adapter-a-000" else "Allowed models: chat.")


def test_an_adapter_that_failed_to_load_is_503_with_a_code():
    from llm_serving.gateway.errors import CODE_BY_EXCEPTION_TYPE, openai_error_from_body
    from llm_serving.gateway.stream_failures import EngineUnavailable
    from llm_serving.lora import AdapterUnavailable

    # What Ray Serve LLM's handler answers for our exception (server_utils.get_response_for_error).
    ray_body = {"error": {"message": "Message: The adapter `chat:broken` could not be loaded: rank 64 "
                          "(Request ID: r1), Internal exception: ...", "type": "AdapterUnavailable", "code": 503}}
    error = json.loads(openai_error_from_body(503, json.dumps(ray_body).encode()))["error"]
    assert error["code"] == "adapter_unavailable" and error["type"] == "service_unavailable_error"
    assert error["message"] == "The adapter `chat:broken` could not be loaded: rank 64"
    assert {AdapterUnavailable.__name__, EngineUnavailable.__name__} == set(CODE_BY_EXCEPTION_TYPE)


def test_an_adapter_that_failed_to_load_gives_back_its_slot():
    from collections import OrderedDict
    from types import SimpleNamespace

    from llm_serving import _ray

    def load_model(model_id):  # the replica's multiplexed loader, as serve.multiplexed leaves it
        return model_id

    wrapper = SimpleNamespace(models=OrderedDict(good="good", broken="broken"), _push_multiplexed_replica_info=False)
    setattr(load_model, _ray.MULTIPLEX_WRAPPER_ATTRIBUTE, wrapper)
    _ray.forget_adapter(SimpleNamespace(_load_model=load_model), "broken")
    assert list(wrapper.models) == ["good"] and wrapper._push_multiplexed_replica_info is True
    _ray.forget_adapter(SimpleNamespace(), "broken")  # no LoRA on the replica: nothing to forget
