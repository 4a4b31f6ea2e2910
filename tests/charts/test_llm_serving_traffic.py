"""app.traffic: rendered as the Gateway deployment's user_config (applied in place by Serve), never
as `args` (a change of args restarts every replica, engines included); the chart renders the same
Serve application `llm-serving serve` deploys from a profile, and refuses what the app refuses."""

from __future__ import annotations

import copy
import re

import pytest
import yaml

from llm_serving.serve_config import GATEWAY_DEPLOYMENT, check_serve_application, serve_application
from llm_serving.traffic_config import TrafficConfigError, parse_traffic_config
from tests.charts import render
from tests.charts.llm_serving_chart import app_args, merged, render_chart, render_cpu, serve_config

CANARY = {
    "aliases": {"chat": {"variants": {"tiny": 90}}},  # `tiny` is CPU_VALUES' model
    "limits": {"window_seconds": 60, "default": {"requests": 600, "tokens": 100000, "concurrent": 8}},
    "keys_revision": "2",
}
PROFILES = render.profiles("llm-serving")
INVALID_TRAFFIC = yaml.safe_load((render.REPO / "tests" / "cases" / "invalid_traffic.yaml").read_text())
KEYS_PATH = "/etc/llm-serving/api-keys/{key}"  # where the chart mounts apiKeys.existingSecret


def application(objects):
    (rendered,) = serve_config(objects)["applications"]
    return rendered


def gateway_override(objects):
    (deployment,) = application(objects)["deployments"]
    return deployment


def test_traffic_goes_to_the_gateway_user_config_not_to_args():
    objects = render_cpu({"app": {"traffic": CANARY}})
    assert "traffic" not in app_args(objects)
    # Only user_config is overridden: anything else there would be a restart (or a failed deploy).
    assert gateway_override(objects) == {"name": "Gateway", "user_config": CANARY}


def test_without_traffic_the_user_config_is_empty():
    # So removing app.traffic from the values resets it in place too.
    assert gateway_override(render_cpu())["user_config"] == {}


def test_a_traffic_change_leaves_args_unchanged():
    # Serve's code version hashes `args`: equal args means no replica restarts.
    before = app_args(render_cpu({"app": {"traffic": CANARY}}))
    after = app_args(render_cpu({"app": {"traffic": {**CANARY, "keys_revision": "3"}}}))
    assert before == after


@pytest.mark.parametrize("fast_path", [True, False])
@pytest.mark.parametrize("models", [1, 2])
def test_the_gateway_deployment_has_one_name_in_both_topologies(fast_path, models):
    # One model on the fast path: the engine replica is the gateway; otherwise a deployment in front.
    # The app names it Gateway either way, so the chart renders a constant.
    tiny = {"source": "builtin://tiny-chat", "device": "cpu"}
    one_or_two = {"org/m.v1": tiny} if models == 1 else {"org/m.v1": tiny, "other": tiny}
    objects = render_cpu({"fastPath": {"enabled": fast_path}, "app": {"models": {"tiny": None, **one_or_two}}})
    assert gateway_override(objects)["name"] == GATEWAY_DEPLOYMENT == "Gateway"


@pytest.mark.parametrize("profile", PROFILES, ids=[p.stem for p in PROFILES])
def test_the_chart_renders_the_application_the_local_command_deploys(profile):
    """llm_serving.serve_config.serve_application is the chart's llm-serving.serveConfig in Python."""
    values = yaml.safe_load(profile.read_text())
    expected = serve_application(values["app"])
    secret = (values.get("apiKeys") or {}).get("existingSecret")
    if secret:  # the chart's one addition: the path where it mounts the keys Secret
        key = values["apiKeys"].get("key") or "keys.yaml"
        expected["args"] = merged(expected["args"], {"gateway": {"auth": {"api_keys": {"file": KEYS_PATH.format(key=key)}}}})
    rendered = application(render_chart(values_files=[profile]))
    assert rendered == expected
    check_serve_application(rendered, profile.name)  # and the app accepts it as rendered


@pytest.mark.parametrize(
    "traffic, message",
    [
        ({"aliases": {"chat": {"variants": {"tiny-chat": -1}}}}, "minimum"),
        ({"limits": {"default": {"requests": 0}}}, "minimum"),
        ({"limits": {"redis_url": "http://redis:6379"}}, "does not match"),
        ({"sticky": True}, "additional properties 'sticky' not allowed"),
    ],
)
def test_the_schema_rejects_bad_traffic_at_helm_time(traffic, message):
    with pytest.raises(render.HelmError, match=message):
        render_cpu({"app": {"traffic": traffic}})


@pytest.mark.parametrize("case", sorted(INVALID_TRAFFIC["cases"]))
def test_the_chart_and_the_app_refuse_each_case_with_one_message(case):
    traffic, message = INVALID_TRAFFIC["cases"][case]["traffic"], INVALID_TRAFFIC["cases"][case]["message"]
    served = INVALID_TRAFFIC["served"]
    with pytest.raises(TrafficConfigError) as refused:
        parse_traffic_config(copy.deepcopy(traffic), served)
    assert refused.value.problems == [message]
    models = {"tiny": None, **{name: {"source": "builtin://tiny-chat", "device": "cpu"} for name in served}}
    with pytest.raises(render.HelmError, match=re.escape(f"app.{message}")):
        render_cpu({"app": {"models": models, "traffic": traffic}})
