"""The CPU image, run as a container with its own entrypoint as its non-root user, driven from the
host with the official openai client: models, streaming chat, embeddings, readiness, RAG ingest and
search, and a per-key limit whose counters live in a real Redis on the host.

    make image-test                                   (builds the image, then runs this module)
    LLM_SERVING_IMAGE=localhost/llm-serving:0.1.0-cpu .venv/bin/python -m pytest tests/image

The container shares the host's network (podman's own networking is not used, as on these
machines) and everything listens on 127.0.0.1 only. It is stopped and removed at the end.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from pathlib import Path

import httpx
import openai
import pytest
import redis
import yaml

from tests.e2e.servers import free_port, per_instance_ports, redis_server

ROOT = Path(__file__).resolve().parents[2]
IMAGE = os.environ.get("LLM_SERVING_IMAGE", "")
READY_TIMEOUT_S = float(os.environ.get("LLM_SERVING_IMAGE_READY_TIMEOUT", "600"))
PODMAN = ["podman", "--runtime", "runc"]  # podman's default runtime (crun) cannot start containers here
MAIN_KEY = "sk-image-test-main-0123456789"
LIMITED_KEY = "sk-image-test-limited-0123456789"
LIMITED_REQUESTS = 3
PROFILE_IN_CONTAINER = "/etc/llm-serving-test/profile.yaml"


def _podman(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*PODMAN, *args], capture_output=True, text=True, check=check, timeout=timeout)


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    """A real redis-server on a free loopback port, for the gateway's shared limit counters."""
    with redis_server(tmp_path_factory.mktemp("redis")) as url:
        yield url


def _profile(redis_url: str) -> dict:
    """dev-cpu's two models, with keys (from an environment variable), RAG and a Redis-backed limit."""
    dev_cpu = yaml.safe_load((ROOT / "values" / "dev-cpu.yaml").read_text())
    return {
        "app": {
            "models": dev_cpu["app"]["models"],
            "gateway": {"auth": {"mode": "api_key", "api_keys": {"env": "LLM_SERVING_TEST_KEYS"}}},
            "rag": {"store": {"uri": "/home/ray/rag.db"}},
            "traffic": {
                "limits": {
                    "window_seconds": 3600,  # one window for the whole test
                    "keys": {"limited": {"requests": LIMITED_REQUESTS}},
                    "redis_url": redis_url,
                }
            },
        }
    }


@pytest.fixture(scope="module")
def container(redis_url, tmp_path_factory):
    """The image with its own entrypoint and user, serving the test profile on 127.0.0.1."""
    config_dir = tmp_path_factory.mktemp("profile")
    (config_dir / "profile.yaml").write_text(yaml.safe_dump(_profile(redis_url)))
    config_dir.chmod(0o755)
    (config_dir / "profile.yaml").chmod(0o644)
    keys = json.dumps({"keys": [{"name": "main", "key": MAIN_KEY}, {"name": "limited", "key": LIMITED_KEY}]})
    port = free_port()
    name = f"llm-serving-image-test-{uuid.uuid4().hex[:8]}"
    started = time.monotonic()
    _podman(
        "run", "--detach", "--name", name,
        "--network", "host",
        "--ulimit", "nofile=20000:20000", "--ulimit", "nproc=4096:4096",
        "--shm-size", "1g",
        "--volume", f"{config_dir}:/etc/llm-serving-test:ro",
        "--env", f"LLM_SERVING_TEST_KEYS={keys}",
        # The container shares the host's network: Serve's fixed ports (HAProxy's stats and metrics,
        # its fallback proxy) may be held by another Ray on this host.
        *[argument for name, value in per_instance_ports().items() for argument in ("--env", f"{name}={value}")],
        IMAGE,
        "serve", PROFILE_IN_CONTAINER, "--host", "127.0.0.1", "--port", str(port),
    )  # fmt: skip
    try:
        logs = ""
        while "ready at http://" not in logs:
            logs = _podman("logs", name, check=False).stdout
            state = _podman("inspect", "--format", "{{.State.Status}}", name, check=False).stdout.strip()
            if state != "running":
                pytest.fail(f"the container stopped ({state}) before it was ready:\n{logs[-4000:]}")
            if time.monotonic() - started > READY_TIMEOUT_S:
                pytest.fail(f"not ready within {READY_TIMEOUT_S:.0f} s:\n{logs[-4000:]}")
            time.sleep(1)
        ready_s = time.monotonic() - started
        size = int(_podman("image", "inspect", "--format", "{{.Size}}", IMAGE).stdout)
        print(f"\nimage {IMAGE}: {size / 1e6:.0f} MB; the container was ready in {ready_s:.0f} s")
        yield {"name": name, "url": f"http://127.0.0.1:{port}", "ready_s": ready_s}
    finally:
        # SIGTERM (the CLI stops Serve and Ray on it), then SIGKILL after 30 s; the container goes.
        _podman("rm", "--force", "--time", "30", name, check=False, timeout=90)
        assert name not in _podman("ps", "--all", "--format", "{{.Names}}", check=False).stdout


def _client(container, key=MAIN_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{container['url']}/v1", api_key=key, max_retries=0, timeout=120)


def test_the_image_runs_as_its_non_root_user_with_its_own_entrypoint(container):
    config = json.loads(_podman("image", "inspect", IMAGE).stdout)[0]["Config"]
    assert config["User"] == "1000"
    assert config["Entrypoint"] == ["llm-serving"]
    assert _podman("exec", container["name"], "id", "-u").stdout.strip() == "1000"
    assert _podman("exec", container["name"], "sh", "-c", "echo $HOME").stdout.strip() == "/home/ray"
    # What KubeRay runs in the container: `ray start` in bash, probes with wget and grep.
    tools = _podman("exec", container["name"], "bash", "-lc", "command -v ray wget grep").stdout.split()
    assert [Path(tool).name for tool in tools] == ["ray", "wget", "grep"]


def test_readyz_and_the_models(container):
    assert httpx.get(f"{container['url']}/readyz", timeout=10).status_code == 200
    models = {model.id for model in _client(container).models.list()}
    assert {"tiny-chat", "all-minilm-l6-v2"} <= models


def test_a_streamed_chat_completion(container):
    stream = _client(container).chat.completions.create(
        model="tiny-chat", messages=[{"role": "user", "content": "hello"}], max_tokens=8, stream=True
    )
    chunks = list(stream)
    assert chunks and chunks[0].model == "tiny-chat"
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text


def test_embeddings_come_from_the_real_minilm(container):
    result = _client(container).embeddings.create(model="all-minilm-l6-v2", input=["bees dance", "ray serve"])
    assert [len(item.embedding) for item in result.data] == [384, 384]


def test_rag_ingest_and_search(container):
    headers = {"authorization": f"Bearer {MAIN_KEY}"}
    base = f"{container['url']}/v1/rag/collections"
    with httpx.Client(headers=headers, timeout=120) as http:
        created = http.post(base, json={"name": "handbook"})
        assert created.status_code == 201, created.text
        documents = [
            {"id": "bees", "text": "Honeybees tell hive mates where flowers are with a waggle dance."},
            {"id": "ray", "text": "Ray Serve runs the model replicas and scales them with the traffic."},
            {"id": "kube", "text": "Kubernetes schedules pods onto nodes that Karpenter provisions."},
        ]
        stored = http.post(f"{base}/handbook/documents", json={"documents": documents})
        assert stored.status_code == 200, stored.text
        hits = http.post(f"{base}/handbook/search", json={"query": "How do bees find flowers?", "top_k": 2})
        assert hits.status_code == 200, hits.text
        assert hits.json()["data"][0]["document_id"] == "bees"


def test_a_redis_backed_per_key_limit_refuses_the_request_past_it(container, redis_url):
    client = _client(container, key=LIMITED_KEY)
    for _ in range(LIMITED_REQUESTS):
        client.embeddings.create(model="all-minilm-l6-v2", input="one more")
    with pytest.raises(openai.RateLimitError) as refused:
        client.embeddings.create(model="all-minilm-l6-v2", input="one too many")
    assert refused.value.code == "rate_limit_exceeded"
    assert refused.value.response.headers.get("retry-after")
    assert redis.Redis.from_url(redis_url).dbsize() > 0, "the counters are not in Redis"
