"""One running app shared by the end-to-end tests: values/dev-cpu.yaml rendered through the
llm-serving chart (with API keys turned on), its RayService serveConfigV2 served by the real
`llm-serving serve`. So these tests also prove that the chart and the image agree.

Starting Ray and two vLLM engines takes about a minute on two cores, so every test that can share
the instance does.
"""

from __future__ import annotations

import signal

import openai
import pytest
import yaml

from tests.e2e.dev_cpu import CHAT_MODEL, CHAT_ONLY_KEY, FULL_KEY, KEYS_DOCUMENT, serve_config_rendered_by_the_chart
from tests.e2e.servers import start_app

@pytest.fixture(scope="session")
def gateway(tmp_path_factory):
    work = tmp_path_factory.mktemp("gateway")
    keys_file = work / "api-keys.yaml"
    keys_file.write_text(yaml.safe_dump(KEYS_DOCUMENT))
    config_file = work / "serve-config.yaml"
    config_file.write_text(serve_config_rendered_by_the_chart(keys_file, batch_store=work / "batch-store"))
    app = start_app(
        config_file,
        work / "serve.log",
        probe_request={"model": CHAT_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1},
        probe_headers={"authorization": f"Bearer {FULL_KEY}"},
    )
    yield app
    stopped = app.stop(signal.SIGINT)  # as Ctrl-C would, to the command only
    assert stopped.clean, f"llm-serving did not stop cleanly: {stopped}\n{app.log_tail()}"


@pytest.fixture(scope="session")
def client(gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.api_url, api_key=FULL_KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="session")
def chat_only_client(gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.api_url, api_key=CHAT_ONLY_KEY, max_retries=0, timeout=120)
