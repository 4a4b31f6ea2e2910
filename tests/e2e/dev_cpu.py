"""The dev-cpu profile as the end-to-end tests serve it: its models, two API keys (one limited to
the chat model), and the profile's app with those keys, as args or as the serveConfigV2 the chart
renders. Shared by the test modules and the shared instance in conftest."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml

from tests.charts.render import VALUES, render_chart
from tests.e2e.servers import REPO, RunningApp, served

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
    """The profile's `app:` block (args and traffic), with API keys from `keys_file` and the Batch
    API's store beside it (test instances never share the profile's store or resume its batches)."""
    args = yaml.safe_load((REPO / "values" / "dev-cpu.yaml").read_text())["app"]
    args["gateway"]["auth"] = {"mode": "api_key", "api_keys": {"file": str(keys_file)}}
    args["batch"]["store_uri"] = str(keys_file.parent / "batch-store")
    return args


@contextmanager
def served_with_keys(work: Path, adjust: Callable[[dict], None]) -> Iterator[RunningApp]:
    """`served` on dev-cpu's models, with the test keys and the profile's args changed by `adjust`."""
    keys_file = work / "api-keys.yaml"
    keys_file.write_text(yaml.safe_dump(KEYS_DOCUMENT))
    args = dev_cpu_with_keys(keys_file)
    adjust(args)
    with served(work, args) as app:
        yield app


@contextmanager
def chat_model_app(work: Path, adjust: Callable[[dict], None]) -> Iterator[RunningApp]:
    """`served` on dev-cpu's chat model alone, with the test keys and the profile's args changed by
    `adjust`."""

    def chat_model_alone(args: dict) -> None:
        args["models"] = {CHAT_MODEL: args["models"][CHAT_MODEL]}
        adjust(args)

    with served_with_keys(work, chat_model_alone) as app:
        yield app


def serve_config_rendered_by_the_chart(keys_file, batch_store=None) -> str:
    """The serveConfigV2 that `helm install -f values/dev-cpu.yaml` would hand to KubeRay (with the
    Batch API's store in `batch_store`, so test runs never share one)."""
    auth = {"mode": "api_key", "api_keys": {"file": str(keys_file)}}
    app = {"gateway": {"auth": auth}}
    if batch_store is not None:
        app["batch"] = {"store_uri": str(batch_store)}
    objects = render_chart("llm-serving", values_files=[VALUES / "dev-cpu.yaml"], values={"app": app})
    (rayservice,) = [obj for obj in objects if obj["kind"] == "RayService"]
    return rayservice["spec"]["serveConfigV2"]
