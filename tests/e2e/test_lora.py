"""LoRA adapters served multiplexed through the gateway: the tiny chat model with two seeded adapters
(and one broken one) in a local folder, on two engine replicas. Clients call `model="tiny-chat:<adapter>"`;
Ray Serve routes an adapter's requests to the replica that already loaded it."""

import signal
import time

import httpx
import openai
import pytest
import yaml

from llm_serving.builtin_models import write_tiny_chat_adapter, write_tiny_chat_adapters
from tests.e2e.dev_cpu import CHAT_MODEL, FULL_KEY
from tests.e2e.servers import scrape, start_app, total

pytestmark = pytest.mark.e2e

ADAPTER_A, ADAPTER_B, BROKEN = f"{CHAT_MODEL}:lora-a", f"{CHAT_MODEL}:lora-b", f"{CHAT_MODEL}:too-large-rank"
MAX_RANK = 8
LORA_A_ONLY_KEY = "sk-e2e-lora-a-only-0123456789"
CHAT_AND_ADAPTERS_KEY = "sk-e2e-chat-and-adapters-0123456789"
KEYS = {
    "keys": [
        {"name": "full-access", "key": FULL_KEY},
        {"name": "lora-a-only", "key": LORA_A_ONLY_KEY, "models": [ADAPTER_A]},
        {"name": "chat-and-adapters", "key": CHAT_AND_ADAPTERS_KEY, "models": [CHAT_MODEL]},
    ]
}
PROMPT = "The gateway checks the API key"
SCRAPE_DEADLINE_S = 90  # Ray's metrics agent exports on an interval


@pytest.fixture(scope="module")
def lora_app(tmp_path_factory):
    work = tmp_path_factory.mktemp("lora")
    adapters = write_tiny_chat_adapters(work / "adapters")
    # A real operator mistake: an adapter whose rank is above the engine's max_rank.
    write_tiny_chat_adapter(adapters / BROKEN.split(":")[1], seed=3, rank=2 * MAX_RANK)
    keys_file = work / "api-keys.yaml"
    keys_file.write_text(yaml.safe_dump(KEYS))
    args = {
        "models": {
            CHAT_MODEL: {
                "source": "builtin://tiny-chat",
                "device": "cpu",
                "max_model_len": 512,
                "engine_kwargs": {"enforce_eager": True, "dtype": "float32"},
                "autoscaling": {"min_replicas": 2, "max_replicas": 2},
                "lora": {"source": str(adapters), "max_adapters_per_replica": 3, "max_rank": MAX_RANK},
            }
        },
        "gateway": {"auth": {"mode": "api_key", "api_keys": {"file": str(keys_file)}}},
    }
    config_file = work / "app.yaml"
    config_file.write_text(yaml.safe_dump(args))
    app = start_app(config_file, work / "serve.log")
    yield app
    stopped = app.stop(signal.SIGINT)
    assert stopped.clean, f"llm-serving did not stop cleanly: {stopped}\n{app.log_tail()}"


def client_for(app, key=FULL_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=app.api_url, api_key=key, max_retries=0, timeout=120)


def complete(client, model) -> str:
    response = client.completions.create(model=model, prompt=PROMPT, max_tokens=8, temperature=0,
                                         extra_body={"ignore_eos": True})
    return response.choices[0].text


def multiplexing(app):
    """A scrape, and per adapter the replicas that hold it (Serve's registered multiplexed model ids)."""
    samples = scrape(app)
    holders = {}
    for (name, labels), value in samples.items():
        labels = dict(labels)
        if name == "ray_serve_registered_multiplexed_model_id" and value == 1:
            holders.setdefault(labels["model_id"], set()).add(labels["replica"])
    return samples, holders


def wait_for_metrics(app, ready, what):
    deadline = time.monotonic() + SCRAPE_DEADLINE_S
    while True:
        samples, holders = multiplexing(app)
        if ready(samples, holders):
            return samples, holders
        assert time.monotonic() < deadline, f"metrics never showed {what}: {holders}"
        time.sleep(2)


def per_replica(samples, name):
    counts = {}
    for (sample, labels), value in samples.items():
        if sample == name:
            replica = dict(labels)["replica"]
            counts[replica] = counts.get(replica, 0) + value
    return counts


# First in the module, on fresh replicas: each adapter is loaded by its first request only.
def test_requests_for_an_adapter_go_to_the_replica_that_holds_it(lora_app):
    client = client_for(lora_app)
    for adapter in (ADAPTER_A, ADAPTER_B):  # first requests: each loads its adapter on one replica
        complete(client, adapter)
        wait_for_metrics(lora_app, lambda _, holders: adapter in holders, f"{adapter} loaded")
    asked = "ray_serve_multiplexed_get_model_requests_counter_total"
    loads = "ray_serve_multiplexed_models_load_counter_total"
    # The counters are exported apart from the holders' gauge: the baseline waits until they count
    # the two first requests and their two loads, or a late export would count as a new load below.
    before, holders_before = wait_for_metrics(
        lora_app, lambda samples, _: total(samples, asked) >= 2 and total(samples, loads) >= 2,
        "the first requests' counters")
    requests_per_adapter = 6
    for _ in range(requests_per_adapter):
        for adapter in (ADAPTER_A, ADAPTER_B):
            complete(client, adapter)
    after, holders = wait_for_metrics(
        lora_app, lambda samples, _: total(samples, asked) - total(before, asked) >= 2 * requests_per_adapter,
        "every adapter request")
    # No request went to a replica without its adapter: that replica would have loaded it.
    assert total(after, loads) - total(before, loads) == 0
    assert len(holders[ADAPTER_A]) == 1 and len(holders[ADAPTER_B]) == 1, holders
    assert holders == holders_before
    grown = {replica: count - per_replica(before, asked).get(replica, 0)
             for replica, count in per_replica(after, asked).items()}
    expected = {}
    for adapter in (ADAPTER_A, ADAPTER_B):
        (replica,) = holders[adapter]
        expected[replica] = expected.get(replica, 0) + requests_per_adapter
    assert {replica: count for replica, count in grown.items() if count} == expected
    print(f"adapter requests by replica: {grown}; holders: {holders}")


def test_base_and_each_adapter_answer_differently_and_repeatably(lora_app):
    client = client_for(lora_app)
    outputs = {model: complete(client, model) for model in (CHAT_MODEL, ADAPTER_A, ADAPTER_B)}
    assert len(set(outputs.values())) == 3, outputs
    for model, text in outputs.items():
        assert complete(client, model) == text, model  # temperature 0: the same answer again
    chat = client.chat.completions.create(model=ADAPTER_B, messages=[{"role": "user", "content": "hi"}],
                                          max_tokens=4, temperature=0, stream=True)
    assert any(chunk.choices and chunk.choices[0].delta.content for chunk in chat)


def test_models_lists_the_adapters_that_exist(lora_app):
    client = client_for(lora_app)
    assert [m.id for m in client.models.list()] == [CHAT_MODEL, ADAPTER_A, ADAPTER_B, BROKEN]
    assert client.models.retrieve(ADAPTER_A).id == ADAPTER_A


def test_unknown_adapter_is_404_naming_those_that_exist(lora_app):
    with pytest.raises(openai.NotFoundError) as unknown:
        complete(client_for(lora_app), f"{CHAT_MODEL}:no-such-adapter")
    assert unknown.value.body["code"] == "model_not_found"
    assert f"Available adapters: {ADAPTER_A}, {ADAPTER_B}, {BROKEN}." in unknown.value.body["message"]


def test_adapter_that_fails_to_load_is_503_with_the_reason(lora_app):
    with pytest.raises(openai.InternalServerError) as failed:
        complete(client_for(lora_app), BROKEN)
    assert failed.value.status_code == 503 and failed.value.body["code"] == "adapter_unavailable"
    message = failed.value.body["message"]
    assert f"The adapter `{BROKEN}` could not be loaded" in message
    assert "max_lora_rank" in message or "rank" in message.lower(), message
    complete(client_for(lora_app), ADAPTER_A)  # the replica still serves the good adapters


def test_keys_limited_to_an_adapter_or_a_model(lora_app):
    only_a = client_for(lora_app, LORA_A_ONLY_KEY)
    complete(only_a, ADAPTER_A)
    for other in (ADAPTER_B, CHAT_MODEL):
        with pytest.raises(openai.PermissionDeniedError) as denied:
            complete(only_a, other)
        assert denied.value.body["message"].endswith(f"Allowed models: {ADAPTER_A}.")
    # A key given the model itself may use its adapters.
    complete(client_for(lora_app, CHAT_AND_ADAPTERS_KEY), ADAPTER_B)


def test_metrics_label_the_adapter(lora_app):
    before = scrape(lora_app)
    complete(client_for(lora_app), ADAPTER_A)
    labels = dict(model=CHAT_MODEL, adapter="lora-a", api_key="full-access", route="/v1/completions",
                  status_code="200")
    deadline = time.monotonic() + SCRAPE_DEADLINE_S
    while (total(scrape(lora_app), "ray_llm_serving_requests_total", **labels)
           - total(before, "ray_llm_serving_requests_total", **labels)) < 1:
        assert time.monotonic() < deadline, "no request counted with adapter=lora-a"
        time.sleep(2)
    assert httpx.get(f"{lora_app.base_url}/readyz").json()["models"] == {CHAT_MODEL: True}
