"""Ray Serve's fastest path: the chat model's engine replica is the ingress (direct streaming via
HAProxy) and the gateway runs inside it, wrapping vLLM's own app. With the embedding model beside it
(`gateway.direct_model`), that replica reaches the embedding engine over a Serve handle and lists
both models. Same promises as the gateway deployment: auth, errors in OpenAI's shape, probes,
metrics."""

import asyncio
import time

import httpx
import openai
import pytest

from tests.e2e.dev_cpu import CHAT_MODEL, CHAT_ONLY_KEY, EMBED_MODEL, FULL_KEY, served_with_keys
from tests.e2e.servers import scrape, total
from tests.e2e.stream_reads import bunched_up, stream_reads

pytestmark = pytest.mark.e2e

HELLO = [{"role": "user", "content": "Hello"}]


SCRAPE_DEADLINE_S = 90  # Ray's metrics agent exports on an interval


def chat_model_direct(args: dict) -> None:
    del args["batch"]  # the Batch API lives in the gateway deployment, so dev-cpu's would turn the fast path off
    args["gateway"]["direct_model"] = CHAT_MODEL


@pytest.fixture(scope="module")
def direct(tmp_path_factory):
    with served_with_keys(tmp_path_factory.mktemp("direct"), chat_model_direct) as app:
        yield app


def test_runs_on_the_direct_streaming_path(direct):
    assert (f"direct streaming: the engine replica is the ingress (of {CHAT_MODEL}; {EMBED_MODEL} through it)"
            in direct.log_path.read_text())


def test_chat_and_streaming_through_the_in_replica_gateway(direct):
    client = openai.OpenAI(base_url=direct.api_url, api_key=FULL_KEY, max_retries=0)
    plain = client.chat.completions.create(model=CHAT_MODEL, messages=HELLO, max_tokens=6, temperature=0)
    streamed = client.chat.completions.create(model=CHAT_MODEL, messages=HELLO, max_tokens=6, temperature=0,
                                              stream=True)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in streamed if chunk.choices)
    assert text == plain.choices[0].message.content
    assert {m.id for m in client.models.list()} == {CHAT_MODEL, EMBED_MODEL}
    assert client.models.retrieve(EMBED_MODEL).id == EMBED_MODEL


def test_the_other_model_is_reached_from_the_direct_replica(direct):
    client = openai.OpenAI(base_url=direct.api_url, api_key=FULL_KEY, max_retries=0)
    before = scrape(direct)
    vectors = client.embeddings.create(model=EMBED_MODEL, input=["Ray Serve", "vLLM"]).data
    assert [len(v.embedding) for v in vectors] == [384, 384]
    with pytest.raises(openai.BadRequestError) as not_a_chat_model:  # the embedding engine's own answer
        client.chat.completions.create(model=EMBED_MODEL, messages=HELLO, max_tokens=4)
    assert "does not support" in not_a_chat_model.value.body["message"]
    chat_only = openai.OpenAI(base_url=direct.api_url, api_key=CHAT_ONLY_KEY, max_retries=0)
    with pytest.raises(openai.PermissionDeniedError):
        chat_only.embeddings.create(model=EMBED_MODEL, input="Ray Serve")
    # The gateway inside the chat replica counts the embedding model's requests too.
    labels = dict(model=EMBED_MODEL, api_key="full-access", route="/v1/embeddings", status_code="200")
    deadline = time.monotonic() + SCRAPE_DEADLINE_S
    while (total(scrape(direct), "ray_llm_serving_requests_total", **labels)
           - total(before, "ray_llm_serving_requests_total", **labels)) < 1:
        assert time.monotonic() < deadline, "no embeddings request counted"
        time.sleep(2)


@pytest.mark.parametrize("client_name", ["aiohttp", "httpx"])
def test_a_stream_arrives_in_many_reads_through_haproxy(direct, client_name):
    # Issue 17: aiohttp was seen getting whole streams in one read here (see tests/e2e/stream_reads.py)
    seen = asyncio.run(stream_reads(client_name, direct.api_url, FULL_KEY, CHAT_MODEL))
    assert seen[-1].streamed(), bunched_up(seen)


def test_auth_and_errors_hold_on_the_fast_path(direct):
    stranger = openai.OpenAI(base_url=direct.api_url, api_key="sk-not-a-real-key-000000", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        stranger.chat.completions.create(model=CHAT_MODEL, messages=HELLO)
    client = openai.OpenAI(base_url=direct.api_url, api_key=FULL_KEY, max_retries=0)
    with pytest.raises(openai.NotFoundError) as unknown:
        client.chat.completions.create(model="other", messages=HELLO)
    assert unknown.value.body["message"].endswith(f"Available models: {EMBED_MODEL}, {CHAT_MODEL}.")
    with pytest.raises(openai.BadRequestError) as invalid:
        client.chat.completions.create(model=CHAT_MODEL, messages=HELLO, max_tokens=-1)
    assert set(invalid.value.body) == {"message", "type", "param", "code"}
    assert invalid.value.body["type"] == "invalid_request_error"


def test_probes_and_closed_cors_on_the_fast_path(direct):
    assert httpx.get(f"{direct.base_url}/healthz").status_code == 200
    ready = httpx.get(f"{direct.base_url}/readyz").json()
    assert (ready["ready"], ready["models"]) == (True, {CHAT_MODEL: True, EMBED_MODEL: True})
    preflight = httpx.options(f"{direct.api_url}/chat/completions",
                              headers={"origin": "https://elsewhere.example", "access-control-request-method": "POST"})
    assert preflight.status_code == 400
    assert "access-control-allow-origin" not in preflight.headers
