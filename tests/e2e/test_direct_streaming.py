"""Ray Serve's fastest path: the chat model's engine replica is the ingress (direct streaming via
HAProxy) and the gateway runs inside it, wrapping vLLM's own app. With the embedding model beside it
(`gateway.direct_model`), that replica reaches the embedding engine over a Serve handle and lists
both models. Same promises as the gateway deployment: auth, errors in OpenAI's shape, probes,
metrics, RAG and the Batch API (dev-cpu's, plus `rag:` on a Milvus Lite file)."""

import asyncio
import time

import httpx
import openai
import pytest

from tests.e2e.dev_cpu import CHAT_MODEL, CHAT_ONLY_KEY, EMBED_MODEL, FULL_KEY, served_with_keys
from tests.e2e.rag_corpus import DOCUMENTS
from tests.e2e.test_batch_api import chat_body, embed_body, line, read_lines, upload, wait_until_done
from tests.e2e.servers import scrape, total
from tests.e2e.stream_reads import bunched_up, stream_reads

pytestmark = pytest.mark.e2e

HELLO = [{"role": "user", "content": "Hello"}]


SCRAPE_DEADLINE_S = 90  # Ray's metrics agent exports on an interval


@pytest.fixture(scope="module")
def direct(tmp_path_factory):
    work = tmp_path_factory.mktemp("direct")

    def chat_model_direct_with_rag(args: dict) -> None:
        args["gateway"]["direct_model"] = CHAT_MODEL
        args["rag"] = {"store": {"uri": str(work / "rag" / "milvus.db")}}

    with served_with_keys(work, chat_model_direct_with_rag) as app:
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
    with pytest.raises(openai.BadRequestError) as unsupported:  # vLLM's app in the replica has no such route
        client.embeddings.create(model=CHAT_MODEL, input="Ray Serve")
    assert unsupported.value.body["message"].startswith(f"The model `{CHAT_MODEL}` does not support /v1/embeddings")
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


def test_rag_runs_in_the_direct_replica(direct):
    # Ingestion embeds over the embedding engine's handle; a chat with `rag` counts its prompt over a
    # handle to the chat model's own deployment and is generated in the replica.
    http = httpx.Client(base_url=direct.base_url, headers={"authorization": f"Bearer {FULL_KEY}"}, timeout=120)
    created = http.post("/v1/rag/collections", json={"name": "notes"})
    assert created.status_code == 201, created.text
    assert (created.json()["embedding_model"], created.json()["dimension"]) == (EMBED_MODEL, 384)
    documents = [{"id": doc_id, "text": DOCUMENTS[doc_id]} for doc_id in ("bees", "volcano", "tides")]
    added = http.post("/v1/rag/collections/notes/documents", json={"documents": documents})
    assert added.status_code == 200, added.text

    client = openai.OpenAI(base_url=direct.api_url, api_key=FULL_KEY, max_retries=0, timeout=120)
    question = [{"role": "user", "content": "How do insects in a hive tell each other where nectar is?"}]
    rag = {"rag": {"collection": "notes", "top_k": 2}}
    completion = client.chat.completions.create(model=CHAT_MODEL, messages=question, max_tokens=8, extra_body=rag)
    citations = completion.model_extra["rag"]["citations"]
    assert citations[0]["document_id"] == "bees" and citations[0]["index"] == 1
    plain = client.chat.completions.create(model=CHAT_MODEL, messages=question, max_tokens=8)
    assert completion.usage.prompt_tokens > plain.usage.prompt_tokens + 10  # the sources are in the prompt
    chunks = list(client.chat.completions.create(model=CHAT_MODEL, messages=question, max_tokens=8, stream=True,
                                                 extra_body=rag))
    assert chunks[0].model_extra["rag"] == completion.model_extra["rag"]
    chat_only = httpx.post(f"{direct.base_url}/v1/rag/collections/notes/search", json={"query": "bees"},
                           headers={"authorization": f"Bearer {CHAT_ONLY_KEY}"})
    assert chat_only.status_code == 403 and chat_only.json()["error"]["code"] == "model_not_allowed"


def test_batch_api_runs_from_the_direct_replica(direct):
    # Chat rows go to the direct model's own deployment (the runner names it: it cannot bind it),
    # embedding rows to the other engine.
    client = openai.OpenAI(base_url=direct.api_url, api_key=FULL_KEY, max_retries=2)
    batches = {}
    for endpoint, url, bodies in (("chat", "/v1/chat/completions", [chat_body(i) for i in range(6)]),
                                  ("embed", "/v1/embeddings", [embed_body(i) for i in range(4)])):
        lines = [line(f"{endpoint}-{i}", url, body) for i, body in enumerate(bodies)]
        batches[endpoint] = client.batches.create(input_file_id=upload(client, lines), endpoint=url,
                                                  completion_window="24h")
    chat, embed = (wait_until_done(client, batches[name].id) for name in ("chat", "embed"))
    assert (chat.status, chat.request_counts.completed) == ("completed", 6), chat
    assert (embed.status, embed.request_counts.completed) == ("completed", 4), embed
    answers = read_lines(client, chat.output_file_id)
    online = client.chat.completions.create(**chat_body(0)).choices[0].message.content
    assert answers["chat-0"]["response"]["body"]["choices"][0]["message"]["content"] == online
    vectors = read_lines(client, embed.output_file_id)
    assert len(vectors["embed-3"]["response"]["body"]["data"][0]["embedding"]) == 384
