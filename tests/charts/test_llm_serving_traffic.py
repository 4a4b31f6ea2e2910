"""app.traffic: rendered as the gateway deployment's user_config (applied in place by Serve), never
as `args` (a change of args restarts every replica, engines included)."""

from __future__ import annotations

import pytest

from llm_serving import app as app_module
from llm_serving.config import parse_app_config
from tests.charts import render
from tests.charts.llm_serving_chart import app_args, render_chart, render_cpu, render_gpu, serve_config

CANARY = {
    "aliases": {"chat": {"variants": {"tiny": 90}}},  # `tiny` is CPU_VALUES' model
    "limits": {"window_seconds": 60, "default": {"requests": 600, "tokens": 100000, "concurrent": 8}},
    "keys_revision": "2",
}
PROFILES = sorted(p for p in render.VALUES.glob("*.yaml"))


def gateway_override(objects):
    (application,) = serve_config(objects)["applications"]
    (deployment,) = application["deployments"]
    return deployment


def test_traffic_goes_to_the_gateway_user_config_not_to_args():
    objects = render_cpu({"app": {"traffic": CANARY}})
    assert "traffic" not in app_args(objects)
    deployment = gateway_override(objects)
    assert deployment["user_config"] == CANARY
    # Only user_config is overridden: anything else there would be a restart (or a failed deploy).
    assert set(deployment) == {"name", "user_config"}


def test_without_traffic_the_user_config_is_empty():
    # So removing app.traffic from the values resets it in place too.
    assert gateway_override(render_cpu())["user_config"] == {}


def test_a_traffic_change_leaves_args_unchanged():
    # Serve's code version hashes `args`: equal args means no replica restarts.
    before = app_args(render_cpu({"app": {"traffic": CANARY}}))
    after = app_args(render_cpu({"app": {"traffic": {**CANARY, "keys_revision": "3"}}}))
    assert before == after


@pytest.mark.parametrize("profile", PROFILES, ids=[p.stem for p in PROFILES])
@pytest.mark.parametrize("fast_path", [True, False])
def test_the_chart_names_the_deployment_the_app_builds(profile, fast_path, monkeypatch):
    objects = render_chart({"fastPath": {"enabled": fast_path}}, values_files=[profile])
    config = parse_app_config(app_args(objects))
    monkeypatch.setattr(app_module, "RAY_SERVE_ENABLE_HA_PROXY", fast_path)
    assert gateway_override(objects)["name"] == app_module.gateway_deployment_name(config)


def test_one_model_on_the_fast_path_names_the_engine_deployment():
    one_model = {"tiny": None, "org/m.v1": {"source": "builtin://tiny-chat", "device": "cpu"}}
    objects = render_cpu({"fastPath": {"enabled": True}, "app": {"models": one_model}})
    assert gateway_override(objects)["name"] == "GatewayLLMServer:org--m_v1"
    forced = render_cpu({"fastPath": {"enabled": True}, "app": {"models": one_model,
                                                                "gateway": {"direct_streaming": False}}})
    assert gateway_override(forced)["name"] == "Gateway"


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


@pytest.mark.parametrize(
    "aliases, message",
    [
        ({"chat": {"variants": {"tiny": 90, "chat-v3": 10}}},
         r"app\.traffic\.aliases\.chat\.variants: chat-v3 not served; variants must be keys under `app\.models` \(tiny\)"),
        ({"tiny": {"variants": {"tiny": 1}}},
         r"app\.traffic\.aliases\.tiny: the alias has the name of a served model; rename the alias"),
        ({"chat": {"variants": {"tiny": 1}, "shadow": {"variant": "chat-v2", "percent": 5}}},
         r"app\.traffic\.aliases\.chat\.shadow\.variant: chat-v2 not served; it must be a key under `app\.models` \(tiny\)"),
    ],
)
def test_aliases_must_split_between_served_models_at_helm_time(aliases, message):
    with pytest.raises(render.HelmError, match=message):
        render_cpu({"app": {"traffic": {"aliases": aliases}}})


@pytest.mark.parametrize("profile", PROFILES, ids=[p.stem for p in PROFILES])
def test_each_profiles_traffic_is_a_config_the_app_accepts(profile):
    """Args and the gateway's user_config validate together (variants are served models, ...)."""
    objects = render_chart(values_files=[profile])
    parse_app_config({**app_args(objects), "traffic": gateway_override(objects)["user_config"]})
