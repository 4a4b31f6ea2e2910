"""One running app shared by the end-to-end tests: values/dev-cpu.yaml rendered through the
llm-serving chart (with API keys turned on), its RayService serveConfigV2 served by the real
`llm-serving serve`. So these tests also prove that the chart and the image agree.

Starting Ray and two vLLM engines takes about a minute on two cores, so every test that can share
the instance does.
"""

from __future__ import annotations

import copy
import signal

import openai
import pytest
import yaml

from llm_serving.config_files import load_app_args
from tests.charts.render import VALUES, render_chart
from tests.e2e.servers import REPO, start_app

CHAT_MODEL = "tiny-chat"
EMBED_MODEL = "all-minilm-l6-v2"
FULL_KEY = "sk-e2e-full-access-0123456789"
CHAT_ONLY_KEY = "sk-e2e-chat-only-0123456789"
KEYS_DOCUMENT = {
    "keys": [
        {"name": "full-access", "key": FULL_KEY},
        {"name": "chat-only", "key": CHAT_ONLY_KEY, "models": [CHAT_MODEL]},
    ]
}


def dev_cpu_with_keys(keys_file) -> dict:
    args = copy.deepcopy(load_app_args(REPO / "values" / "dev-cpu.yaml"))
    args["gateway"]["auth"] = {"mode": "api_key", "api_keys": {"file": str(keys_file)}}
    return args


def serve_config_rendered_by_the_chart(keys_file) -> str:
    """The serveConfigV2 that `helm install -f values/dev-cpu.yaml` would hand to KubeRay."""
    auth = {"mode": "api_key", "api_keys": {"file": str(keys_file)}}
    objects = render_chart("llm-serving", values_files=[VALUES / "dev-cpu.yaml"],
                           values={"app": {"gateway": {"auth": auth}}})
    (rayservice,) = [obj for obj in objects if obj["kind"] == "RayService"]
    return rayservice["spec"]["serveConfigV2"]


@pytest.fixture(scope="session")
def gateway(tmp_path_factory):
    work = tmp_path_factory.mktemp("gateway")
    keys_file = work / "api-keys.yaml"
    keys_file.write_text(yaml.safe_dump(KEYS_DOCUMENT))
    config_file = work / "serve-config.yaml"
    config_file.write_text(serve_config_rendered_by_the_chart(keys_file))
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
