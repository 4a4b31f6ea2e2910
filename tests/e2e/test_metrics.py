"""The app's own metrics, scraped from Ray's Prometheus endpoint like a PodMonitor would, after
real traffic: per model and API key, requests by status, latency, time to first token, tokens."""

import time

import httpx
import pytest

from tests.e2e.dev_cpu import CHAT_MODEL, EMBED_MODEL
from tests.e2e.servers import scrape, total

pytestmark = pytest.mark.e2e

SCRAPE_DEADLINE_S = 90  # Ray's metrics agent exports on an interval


@pytest.fixture(scope="module")
def traffic(client, gateway):
    """Known traffic, then a scrape once the exporter has caught up with it."""
    before = scrape(gateway)
    plain = client.chat.completions.create(model=CHAT_MODEL, messages=[{"role": "user", "content": "hi"}],
                                           max_tokens=5, temperature=0)
    streamed = list(client.chat.completions.create(model=CHAT_MODEL, messages=[{"role": "user", "content": "hi"}],
                                                   max_tokens=7, stream=True, extra_body={"ignore_eos": True}))
    client.embeddings.create(model=EMBED_MODEL, input="metrics")
    httpx.post(f"{gateway.api_url}/chat/completions", json={"model": "no-such-model", "messages": []},
               headers={"authorization": f"Bearer {client.api_key}"})
    expected = [  # (series, labels, least growth) that this traffic must produce
        ("ray_llm_serving_requests_total",
         dict(model=CHAT_MODEL, api_key="full-access", route="/v1/chat/completions", status_code="200"), 2),
        ("ray_llm_serving_requests_total", dict(model=EMBED_MODEL, route="/v1/embeddings", status_code="200"), 1),
        ("ray_llm_serving_requests_total", dict(model="none", status_code="404"), 1),
        ("ray_llm_serving_generated_tokens_total", dict(model=CHAT_MODEL, api_key="full-access"),
         plain.usage.completion_tokens + 7),
        ("ray_llm_serving_inter_token_latency_ms_count", dict(model=CHAT_MODEL), 5),
    ]
    # Ray's agent exports on an interval, and series from earlier requests (the start-up probes) may
    # land after `before`: wait until every series this traffic must grow has grown.
    deadline = time.monotonic() + SCRAPE_DEADLINE_S
    while True:
        after = scrape(gateway)
        caught_up = all(total(after, name, **labels) - total(before, name, **labels) >= least
                        for name, labels, least in expected)
        if caught_up or time.monotonic() > deadline:
            return before, after, plain, streamed
        time.sleep(2)


def delta(traffic, name, **labels):
    before, after, *_ = traffic
    return total(after, name, **labels) - total(before, name, **labels)


def test_requests_are_counted_by_model_key_route_and_status(traffic):
    chat = dict(model=CHAT_MODEL, api_key="full-access", route="/v1/chat/completions", status_code="200")
    assert delta(traffic, "ray_llm_serving_requests_total", **chat) >= 2
    assert delta(traffic, "ray_llm_serving_requests_total", model=EMBED_MODEL, route="/v1/embeddings",
                 status_code="200") >= 1
    # An unknown model is counted without echoing the client's model name into a label.
    assert delta(traffic, "ray_llm_serving_requests_total", model="none", status_code="404") >= 1


def test_tokens_match_what_the_engine_reported(traffic):
    _, _, plain, _ = traffic
    assert delta(traffic, "ray_llm_serving_generated_tokens_total", model=CHAT_MODEL,
                 api_key="full-access") >= plain.usage.completion_tokens + 7
    assert delta(traffic, "ray_llm_serving_prompt_tokens_total", model=CHAT_MODEL) >= 2 * plain.usage.prompt_tokens
    assert delta(traffic, "ray_llm_serving_prompt_tokens_total", model=EMBED_MODEL) >= 1


def test_latency_histograms_are_filled(traffic):
    assert delta(traffic, "ray_llm_serving_request_latency_ms_count", model=CHAT_MODEL) >= 2
    assert delta(traffic, "ray_llm_serving_time_to_first_token_ms_count", model=CHAT_MODEL) >= 1
    assert delta(traffic, "ray_llm_serving_inter_token_latency_ms_count", model=CHAT_MODEL) >= 5


def test_stream_clients_that_did_not_ask_for_usage_do_not_get_it(traffic):
    *_, streamed = traffic
    assert all(chunk.usage is None for chunk in streamed)
    assert all(chunk.choices for chunk in streamed)


def test_every_metric_the_dashboards_and_alerts_use_is_exported(gateway, client, traffic):
    """The llm-monitoring chart must show something: each raw metric name its dashboards and alert
    rules query appears in a scrape of the running app, unless it is listed (with the reason) as one
    a CPU setup cannot export (GPU/DCGM, the KubeRay operator, ...)."""
    from tests.charts.monitoring_metrics import metric_names_used, metrics_not_on_cpu

    # A prefix-cache hit (the same long prompt twice) and a 5xx-free run export the remaining families.
    long_prompt = "Ray Serve routes requests to vLLM engines on GPU nodes. " * 20
    for _ in range(2):
        client.completions.create(model=CHAT_MODEL, prompt=long_prompt, max_tokens=2)
    used = metric_names_used()
    exempt = set(metrics_not_on_cpu())
    deadline = time.monotonic() + SCRAPE_DEADLINE_S
    while True:
        exported = {name for name, _ in scrape(gateway)}
        missing = {name: places for name, places in used.items() if name not in exported and name not in exempt}
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(5)
    assert not missing, "used by dashboards/alerts but not exported:\n" + "\n".join(
        f"  {name}: {sorted(places)[:3]}" for name, places in sorted(missing.items()))
    assert exempt <= set(used), f"listed as not-on-CPU but no longer used: {sorted(exempt - set(used))}"
