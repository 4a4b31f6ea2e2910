"""Request-shape validation (gateway/request_shapes.py) against vLLM's own request models: every
field of a chat, completion or embedding body that can carry a wrong type is refused with a 400
naming the field, good bodies pass, and the gateway answers it before the engine is reached."""

import asyncio
import json
import statistics
import time

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from llm_serving.config import GatewayConfig
from llm_serving.gateway.errors import GatewayError
from llm_serving.gateway.middleware import build_gateway
from llm_serving.gateway.request_shapes import CHAT_PATH, COMPLETIONS_PATH, EMBEDDINGS_PATH, check_request_shape

USER = [{"role": "user", "content": "Hello"}]
TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {}}}}
TOOL_CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}


def chat(**fields):
    return {"model": "chat", "messages": USER, **fields}


def message(**fields):
    return chat(messages=[{"role": "user", "content": "Hello", **fields}])


def assistant_calls(tool_calls):
    return chat(messages=[*USER, {"role": "assistant", "content": None, "tool_calls": tool_calls}])


# (path, body, the param the 400 must name, a word its message must contain)
BAD_BODIES = {
    # chat: the message shapes
    "chat-messages-not-a-list": (CHAT_PATH, chat(messages="Hello"), "messages", "list"),
    "chat-messages-missing": (CHAT_PATH, {"model": "chat"}, "messages", "required"),
    "chat-message-not-an-object": (CHAT_PATH, chat(messages=["Hello"]), "messages[0]", "object"),
    "chat-role-missing": (CHAT_PATH, chat(messages=[{"content": "Hello"}]), "messages[0].role", "required"),
    "chat-role-not-a-string": (CHAT_PATH, message(role=7), "messages[0].role", "string"),
    "chat-content-an-object": (CHAT_PATH, message(content={"nested": True}), "messages[0].content", "array"),
    "chat-content-a-number": (CHAT_PATH, message(content=42), "messages[0].content", "string"),
    "chat-content-part-not-an-object": (CHAT_PATH, message(content=[42]), "messages[0].content[0]", "object"),
    "chat-content-part-a-bare-string": (CHAT_PATH, message(content=["Hello"]), "messages[0].content[0]", "object"),
    "chat-content-part-without-type": (
        CHAT_PATH, message(content=[{"text": "Hello"}]), "messages[0].content[0].type", "string"),
    "chat-content-part-text-not-a-string": (
        CHAT_PATH, message(content=[{"type": "text", "text": 5}]), "messages[0].content[0].text", "string"),
    "chat-content-part-image-url-not-an-object": (
        CHAT_PATH, message(content=[{"type": "image_url", "image_url": 5}]), "messages[0].content[0].image_url",
        "dictionary"),
    "chat-name-not-a-string": (CHAT_PATH, message(name=5), "messages[0].name", "string"),
    "chat-tool-call-id-not-a-string": (
        CHAT_PATH, chat(messages=[*USER, {"role": "tool", "content": "12C", "tool_call_id": 5}]),
        "messages[1].tool_call_id", "string"),
    "chat-tool-calls-an-object": (CHAT_PATH, assistant_calls({"id": "call_1"}), "messages[1].tool_calls", "array"),
    "chat-tool-call-not-an-object": (CHAT_PATH, assistant_calls(["call_1"]), "messages[1].tool_calls[0]", "object"),
    "chat-tool-call-function-a-string": (
        CHAT_PATH, assistant_calls([{**TOOL_CALL, "function": "get_weather"}]), "messages[1].tool_calls[0].function",
        "object"),
    "chat-tool-call-arguments-an-object": (
        CHAT_PATH, assistant_calls([{**TOOL_CALL, "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}]),
        "messages[1].tool_calls[0].function.arguments", "JSON"),
    "chat-tool-call-id-missing": (
        CHAT_PATH, assistant_calls([{"type": "function", "function": TOOL_CALL["function"]}]),
        "messages[1].tool_calls[0].id", "string"),
    # chat: the parameters
    "chat-model-not-a-string": (CHAT_PATH, chat(model=5), "model", "string"),
    "chat-max-tokens-a-word": (CHAT_PATH, chat(max_tokens="many"), "max_tokens", "integer"),
    "chat-max-tokens-fractional": (CHAT_PATH, chat(max_tokens=1.5), "max_tokens", "integer"),
    "chat-max-completion-tokens-a-list": (CHAT_PATH, chat(max_completion_tokens=[8]), "max_completion_tokens",
                                          "integer"),
    "chat-temperature-a-word": (CHAT_PATH, chat(temperature="hot"), "temperature", "number"),
    "chat-top-p-a-list": (CHAT_PATH, chat(top_p=[0.9]), "top_p", "number"),
    "chat-n-a-word": (CHAT_PATH, chat(n="two"), "n", "integer"),
    "chat-stop-a-number": (CHAT_PATH, chat(stop=5), "stop", "string"),
    "chat-stop-list-of-numbers": (CHAT_PATH, chat(stop=[5]), "stop[0]", "string"),
    "chat-stream-a-word": (CHAT_PATH, chat(stream="sometimes"), "stream", "boolean"),
    "chat-stream-options-a-string": (CHAT_PATH, chat(stream=True, stream_options="usage"), "stream_options",
                                     "dictionary"),
    "chat-stream-options-include-usage-a-word": (
        CHAT_PATH, chat(stream=True, stream_options={"include_usage": "maybe"}), "stream_options.include_usage",
        "boolean"),
    "chat-logprobs-a-word": (CHAT_PATH, chat(logprobs="maybe"), "logprobs", "boolean"),
    "chat-top-logprobs-a-word": (CHAT_PATH, chat(logprobs=True, top_logprobs="five"), "top_logprobs", "integer"),
    "chat-seed-a-word": (CHAT_PATH, chat(seed="lucky"), "seed", "integer"),
    "chat-frequency-penalty-a-word": (CHAT_PATH, chat(frequency_penalty="high"), "frequency_penalty", "number"),
    "chat-logit-bias-a-list": (CHAT_PATH, chat(logit_bias=[1]), "logit_bias", "dictionary"),
    "chat-tools-a-string": (CHAT_PATH, chat(tools="get_weather"), "tools", "list"),
    "chat-tool-function-a-string": (CHAT_PATH, chat(tools=[{"type": "function", "function": "get_weather"}]),
                                    "tools[0].function", "dictionary"),
    "chat-tool-choice-a-number": (CHAT_PATH, chat(tools=[TOOL], tool_choice=5), "tool_choice", "tool_choice"),
    "chat-tool-choice-function-a-string": (
        CHAT_PATH, chat(tools=[TOOL], tool_choice={"type": "function", "function": "get_weather"}),
        "tool_choice.function", "function"),
    "chat-response-format-a-string": (CHAT_PATH, chat(response_format="json"), "response_format", "dictionary"),
    "chat-response-format-type-a-number": (CHAT_PATH, chat(response_format={"type": 5}), "response_format.type",
                                           "json_object"),
    "chat-user-a-number": (CHAT_PATH, chat(user=5), "user", "string"),
    # completions
    "completion-prompt-missing": (COMPLETIONS_PATH, {"model": "chat"}, "prompt", "provided"),
    "completion-prompt-an-object": (COMPLETIONS_PATH, {"model": "chat", "prompt": {"text": "Hi"}}, "prompt", "string"),
    "completion-prompt-a-number": (COMPLETIONS_PATH, {"model": "chat", "prompt": 5}, "prompt", "string"),
    "completion-prompt-tokens-fractional": (COMPLETIONS_PATH, {"model": "chat", "prompt": [1.5]}, "prompt[0]",
                                            "integer"),
    "completion-prompt-list-of-objects": (COMPLETIONS_PATH, {"model": "chat", "prompt": [{"text": "Hi"}]},
                                          "prompt[0]", "string"),
    "completion-model-not-a-string": (COMPLETIONS_PATH, {"model": 5, "prompt": "Hi"}, "model", "string"),
    "completion-max-tokens-a-word": (COMPLETIONS_PATH, {"model": "chat", "prompt": "Hi", "max_tokens": "x"},
                                     "max_tokens", "integer"),
    "completion-temperature-a-word": (COMPLETIONS_PATH, {"model": "chat", "prompt": "Hi", "temperature": "hot"},
                                      "temperature", "number"),
    "completion-echo-a-word": (COMPLETIONS_PATH, {"model": "chat", "prompt": "Hi", "echo": "loud"}, "echo",
                               "boolean"),
    "completion-logprobs-a-word": (COMPLETIONS_PATH, {"model": "chat", "prompt": "Hi", "logprobs": "x"}, "logprobs",
                                   "integer"),
    "completion-stop-a-number": (COMPLETIONS_PATH, {"model": "chat", "prompt": "Hi", "stop": 5}, "stop", "string"),
    "completion-stream-a-word": (COMPLETIONS_PATH, {"model": "chat", "prompt": "Hi", "stream": "x"}, "stream",
                                 "boolean"),
    "completion-suffix-a-number": (COMPLETIONS_PATH, {"model": "chat", "prompt": "Hi", "suffix": 5}, "suffix",
                                   "string"),
    "completion-user-a-number": (COMPLETIONS_PATH, {"model": "chat", "prompt": "Hi", "user": 5}, "user", "string"),
    # embeddings
    "embedding-input-an-object": (EMBEDDINGS_PATH, {"model": "embed", "input": {"text": "Hi"}}, "input", "string"),
    "embedding-input-a-number": (EMBEDDINGS_PATH, {"model": "embed", "input": 5}, "input", "string"),
    "embedding-input-list-of-objects": (EMBEDDINGS_PATH, {"model": "embed", "input": [{"text": "Hi"}]}, "input[0]",
                                        "string"),
    "embedding-encoding-format-a-number": (EMBEDDINGS_PATH, {"model": "embed", "input": "Hi", "encoding_format": 5},
                                           "encoding_format", "base64"),
    "embedding-dimensions-a-word": (EMBEDDINGS_PATH, {"model": "embed", "input": "Hi", "dimensions": "many"},
                                    "dimensions", "integer"),
    "embedding-model-not-a-string": (EMBEDDINGS_PATH, {"model": 5, "input": "Hi"}, "model", "string"),
    "embedding-user-a-number": (EMBEDDINGS_PATH, {"model": "embed", "input": "Hi", "user": 5}, "user", "string"),
    "embedding-chat-content-an-object": (
        EMBEDDINGS_PATH, {"model": "embed", "messages": [{"role": "user", "content": {"nested": True}}]},
        "messages[0].content", "array"),
}

GOOD_BODIES = {
    "chat-plain": (CHAT_PATH, chat(max_tokens=8, temperature=0.5, top_p=0.9, n=1, stop=["\n"], seed=1, user="u1")),
    "chat-empty-messages": (CHAT_PATH, {"messages": []}),  # vLLM's model takes it; the template decides
    "chat-stream-with-usage": (CHAT_PATH, chat(stream=True, stream_options={"include_usage": True})),
    "chat-content-parts": (CHAT_PATH, message(content=[{"type": "text", "text": "Hi"},
                                                       {"type": "image_url", "image_url": {"url": "https://x/y.png"}}])),
    "chat-content-null-with-tool-calls-and-a-tool-answer": (
        CHAT_PATH, chat(messages=[*USER, {"role": "assistant", "content": None, "tool_calls": [TOOL_CALL]},
                                  {"role": "tool", "content": "12C", "tool_call_id": "call_1"}], tools=[TOOL])),
    "chat-system-developer-and-custom-roles": (
        CHAT_PATH, chat(messages=[{"role": "system", "content": "Be brief."}, {"role": "developer", "content": "x"},
                                  {"role": "critic", "content": "y"}, *USER])),
    "chat-tool-choice-named": (CHAT_PATH, chat(tools=[TOOL], tool_choice={"type": "function",
                                                                          "function": {"name": "get_weather"}})),
    "chat-response-format-json": (CHAT_PATH, chat(response_format={"type": "json_object"})),
    "chat-logprobs": (CHAT_PATH, chat(logprobs=True, top_logprobs=2)),
    "chat-extra-fields-the-engine-ignores": (CHAT_PATH, chat(rag={"collection": "docs"}, metadata={"k": "v"})),
    "completion-string": (COMPLETIONS_PATH, {"model": "chat", "prompt": "Hi", "max_tokens": 4, "echo": True}),
    "completion-strings": (COMPLETIONS_PATH, {"model": "chat", "prompt": ["Hi", "Yo"], "logprobs": 2}),
    "completion-token-ids": (COMPLETIONS_PATH, {"model": "chat", "prompt": [1, 2, 3]}),
    "embedding-string": (EMBEDDINGS_PATH, {"model": "embed", "input": "Hi", "encoding_format": "base64"}),
    "embedding-strings": (EMBEDDINGS_PATH, {"model": "embed", "input": ["Hi", "Yo"], "dimensions": 384}),
    "embedding-chat": (EMBEDDINGS_PATH, {"model": "embed", "messages": USER}),
    "other-paths-are-the-engines-business": ("/v1/score", {"anything": {"nested": True}}),
}


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
            refused = await client.post(CHAT_PATH, json=message(content={"nested": True}))
            assert refused.status_code == 400
            assert refused.json()["error"]["param"] == "messages[0].content"
            assert refused.json()["error"]["type"] == "invalid_request_error"
            assert set(refused.json()["error"]) == {"message", "type", "param", "code"}
            passed = await client.post(CHAT_PATH, json=chat())
            assert passed.status_code == 200 and passed.json() == {"reached": "engine"}
            # An unknown model is still a 404, whatever the body's shape.
            assert (await client.post(CHAT_PATH, json={"model": "gpt-9", "messages": "x"})).status_code == 404

    asyncio.run(run())
