"""The OpenAI-compatible API of the real app (Ray Serve LLM + vLLM CPU engines), driven by the
official `openai` client: models, chat, completions, embeddings, auth, and every error case."""

from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
import yaml

from tests.e2e.dev_cpu import CHAT_MODEL, CHAT_ONLY_KEY, EMBED_MODEL, FULL_KEY

pytestmark = pytest.mark.e2e

HELLO = [{"role": "user", "content": "Hello, who are you?"}]


def assert_openai_error_body(body: dict, code=None):
    assert set(body["error"]) == {"message", "type", "param", "code"}, body
    assert body["error"]["message"], body
    if code is not None:
        assert body["error"]["code"] == code, body


def test_lists_both_models(client):
    assert sorted(model.id for model in client.models.list()) == sorted([CHAT_MODEL, EMBED_MODEL])


def test_chat_completion(client):
    response = client.chat.completions.create(model=CHAT_MODEL, messages=HELLO, max_tokens=8, temperature=0)
    choice = response.choices[0]
    assert response.model == CHAT_MODEL
    assert isinstance(choice.message.content, str) and choice.message.role == "assistant"
    assert choice.finish_reason in ("length", "stop")
    assert 0 < response.usage.completion_tokens <= 8
    assert response.usage.prompt_tokens > 0


def test_chat_completion_streams_server_sent_events(client):
    stream = client.chat.completions.create(model=CHAT_MODEL, messages=HELLO, max_tokens=8, stream=True,
                                            temperature=0)
    chunks = list(stream)
    assert len(chunks) >= 2
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    whole = client.chat.completions.create(model=CHAT_MODEL, messages=HELLO, max_tokens=8, temperature=0)
    assert text == whole.choices[0].message.content  # the deltas add up to the same answer
    assert chunks[-1].choices[0].finish_reason in ("length", "stop")


def test_completion_streaming_and_not(client):
    plain = client.completions.create(model=CHAT_MODEL, prompt="The quick brown fox", max_tokens=6, temperature=0)
    assert plain.choices[0].finish_reason in ("length", "stop")
    streamed = list(client.completions.create(model=CHAT_MODEL, prompt="The quick brown fox", max_tokens=6,
                                              temperature=0, stream=True))
    # Greedy decoding: streaming must produce the same text as the plain call.
    assert "".join(c.choices[0].text for c in streamed if c.choices) == plain.choices[0].text


def test_embeddings_come_from_the_real_model(client):
    response = client.embeddings.create(
        model=EMBED_MODEL,
        input=["A cat sits on the mat.", "A kitten is sitting on a rug.", "GPU nodes run the inference server."],
    )
    vectors = np.array([item.embedding for item in response.data])
    assert vectors.shape == (3, 384)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    similar, unrelated = vectors[0] @ vectors[1], vectors[0] @ vectors[2]
    assert similar > unrelated + 0.2, (similar, unrelated)


def test_requests_are_routed_by_model_name(client):
    chat = client.chat.completions.create(model=CHAT_MODEL, messages=HELLO, max_tokens=2)
    embedding = client.embeddings.create(model=EMBED_MODEL, input="routing")
    assert chat.model == CHAT_MODEL and embedding.model == EMBED_MODEL
    # The embedding model cannot chat: a client error, not a crash.
    with pytest.raises(openai.APIStatusError) as refused:
        client.chat.completions.create(model=EMBED_MODEL, messages=HELLO, max_tokens=2)
    assert 400 <= refused.value.status_code < 500
    assert_openai_error_body({"error": refused.value.body})  # the client unwraps "error"


def test_missing_key_gets_401(gateway):
    response = httpx.post(f"{gateway.api_url}/chat/completions", json={"model": CHAT_MODEL, "messages": HELLO})
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert_openai_error_body(response.json(), "missing_api_key")


def test_wrong_key_gets_401(gateway):
    stranger = openai.OpenAI(base_url=gateway.api_url, api_key="sk-not-a-real-key-000000", max_retries=0)
    for call in (stranger.models.list, lambda: stranger.chat.completions.create(model=CHAT_MODEL, messages=HELLO)):
        with pytest.raises(openai.AuthenticationError) as refused:
            call()
        assert refused.value.body["code"] == "invalid_api_key"


def test_key_limited_to_the_chat_model(chat_only_client):
    assert chat_only_client.chat.completions.create(model=CHAT_MODEL, messages=HELLO, max_tokens=2).choices
    with pytest.raises(openai.PermissionDeniedError) as refused:
        chat_only_client.embeddings.create(model=EMBED_MODEL, input="not for this key")
    assert refused.value.status_code == 403
    assert refused.value.body["code"] == "model_not_allowed"
    assert CHAT_MODEL in refused.value.body["message"]


def test_unknown_model_gets_404_listing_the_models(client):
    with pytest.raises(openai.NotFoundError) as refused:
        client.chat.completions.create(model="gpt-4o", messages=HELLO)
    assert refused.value.body["code"] == "model_not_found"
    assert CHAT_MODEL in refused.value.body["message"] and EMBED_MODEL in refused.value.body["message"]


@pytest.mark.parametrize(
    "overrides",
    [
        {"messages": "not a list"},
        {"max_tokens": -1},
        {"max_tokens": 100000},  # beyond max_model_len
        {"temperature": "hot"},
        {"top_p": 5},
    ],
    ids=["messages-not-a-list", "negative-max-tokens", "max-tokens-over-context", "temperature-not-a-number",
         "top-p-out-of-range"],
)
def test_invalid_parameters_get_400_in_openai_shape(client, overrides):
    body = {"model": CHAT_MODEL, "messages": HELLO, "max_tokens": 4, **overrides}
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(**body)
    assert refused.value.status_code == 400
    assert refused.value.body["message"] and refused.value.body["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    "content, status, code",
    [
        (b"{this is not json", 400, "invalid_json"),
        (b'{"model": "tiny-chat", "max_tokens": 4}', 400, None),  # no messages
        (b'{"model": "tiny-chat", "pad": "' + b"x" * (5 << 20) + b'"}', 413, "request_too_large"),
    ],
    ids=["malformed-json", "messages-missing", "body-over-limit"],
)
def test_malformed_and_oversized_bodies(gateway, content, status, code):
    response = httpx.post(f"{gateway.api_url}/chat/completions", content=content, timeout=60,
                          headers={"authorization": f"Bearer {FULL_KEY}", "content-type": "application/json"})
    assert response.status_code == status
    assert_openai_error_body(response.json(), code)


def test_model_not_ready_got_503_with_retry_after_while_starting(gateway):
    not_ready = [seen for seen in gateway.startup if seen.status == 503 and "model_not_ready" in seen.body]
    assert not_ready, f"no 503 seen while starting; statuses: {[seen.status for seen in gateway.startup]}"
    assert int(not_ready[0].headers["retry-after"]) > 0
    # Once ready, the same request succeeds.
    again = httpx.post(f"{gateway.api_url}/chat/completions", timeout=60, headers={"authorization": f"Bearer {FULL_KEY}"},
                       json={"model": CHAT_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1})
    assert again.status_code == 200, again.text


def test_probes_need_no_key(gateway):
    assert httpx.get(f"{gateway.base_url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{gateway.base_url}/readyz")
    assert ready.status_code == 200
    assert (ready.json()["ready"], ready.json()["models"]) == (True, {CHAT_MODEL: True, EMBED_MODEL: True})


def test_cors_is_closed_by_default(gateway):
    preflight = httpx.options(f"{gateway.api_url}/chat/completions",
                              headers={"origin": "https://elsewhere.example", "access-control-request-method": "POST"})
    assert preflight.status_code == 400
    response = httpx.get(f"{gateway.api_url}/models",
                         headers={"origin": "https://elsewhere.example", "authorization": f"Bearer {FULL_KEY}"})
    assert response.status_code == 200
    assert "access-control-allow-origin" not in response.headers


def test_chat_only_key_sees_its_models_in_error_messages(chat_only_client):
    with pytest.raises(openai.NotFoundError) as refused:
        chat_only_client.chat.completions.create(model="nope", messages=HELLO)
    assert refused.value.body["message"].endswith(f"Available models: {CHAT_MODEL}.")
    assert EMBED_MODEL not in refused.value.body["message"]
    assert CHAT_ONLY_KEY not in refused.value.body["message"]


# Every field of a chat, completion or embedding body that can carry a wrong type (the table the unit
# tests of gateway/request_shapes.py also run), against the real app: a 400 naming the field, never
# the 500 that a chat message with an object as `content` used to get.
BAD_SHAPES = yaml.safe_load((Path(__file__).resolve().parents[1] / "cases" / "bad_request_shapes.yaml").read_text())
ENDPOINTS = {"chat": "/chat/completions", "completions": "/completions", "embeddings": "/embeddings"}
SERVED = {"chat": CHAT_MODEL, "embed": EMBED_MODEL}


def as_served(body: dict) -> dict:
    """The table's body with its stand-in model name replaced by the served model's."""
    model = body.get("model")
    return {**body, "model": SERVED[model]} if isinstance(model, str) else body


@pytest.mark.parametrize("case", BAD_SHAPES["bad"].values(), ids=BAD_SHAPES["bad"].keys())
def test_wrong_types_get_400_naming_the_field(gateway, case):
    response = httpx.post(f"{gateway.api_url}{ENDPOINTS[case['endpoint']]}", json=as_served(case["body"]),
                          headers={"authorization": f"Bearer {FULL_KEY}"}, timeout=60)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert_openai_error_body({"error": error})
    assert error["type"] == "invalid_request_error"
    assert error["param"] == case["param"], error
    assert case["says"].lower() in error["message"].lower(), error


def test_nested_object_content_is_a_400_through_the_openai_client(client):
    """Issue 14's report, as a user sends it."""
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model=CHAT_MODEL, messages=[{"role": "user", "content": {"nested": True}}],
                                       max_tokens=4)
    assert refused.value.body["param"] == "messages[0].content"
    assert "string or an array of content parts" in refused.value.body["message"]


def test_well_shaped_content_parts_and_tool_turns_still_reach_the_engine(client):
    parts = client.chat.completions.create(
        model=CHAT_MODEL, max_tokens=4,
        messages=[{"role": "user", "content": [{"type": "text", "text": "Hello,"}, {"type": "text", "text": "you"}]}],
    )
    assert parts.choices[0].finish_reason in ("length", "stop")
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}
    tool_turn = client.chat.completions.create(
        model=CHAT_MODEL, max_tokens=4,
        messages=[*HELLO, {"role": "assistant", "content": None, "tool_calls": [call]},
                  {"role": "tool", "content": "12C and sunny", "tool_call_id": "call_1"}],
    )
    assert tool_turn.choices[0].finish_reason in ("length", "stop")

