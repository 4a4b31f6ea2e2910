"""Per-model request routing (issue 16): our `request_router` setting as Ray Serve's
request_router_config, its rejections, and the topology it needs."""

import inspect

import pytest
from ray.serve.config import RequestRouterConfig

import llm_serving.app as app_module
from llm_serving.app import to_llm_config, uses_direct_streaming
from llm_serving.config import ConfigError, parse_app_config


def one_model(**model_overrides):
    model = {"source": "org/model", **model_overrides}
    return {"models": {"chat": model}, "gateway": {"auth": {"mode": "none"}}}


def serve_router_config(**model_overrides) -> RequestRouterConfig:
    """What Serve makes of the deployment_config we hand Ray Serve LLM."""
    llm_config = to_llm_config("chat", parse_app_config(one_model(**model_overrides)).models["chat"])
    return RequestRouterConfig(**llm_config.deployment_config["request_router_config"])


def test_prefix_cache_affinity_is_ray_serve_llms_public_router_with_its_thresholds():
    from ray.serve.llm.request_router import PrefixCacheAffinityRouter

    router = serve_router_config(request_router={
        "policy": "prefix_cache_affinity", "imbalanced_threshold": 8, "match_rate_threshold": 0.2,
        "eviction": {"threshold_chars": 1000, "target_chars": 800, "interval_s": 5},
    })
    assert router.get_request_router_class() is PrefixCacheAffinityRouter
    assert router.request_router_kwargs == {
        "imbalanced_threshold": 8, "match_rate_threshold": 0.2, "do_eviction": True,
        "eviction_threshold_chars": 1000, "eviction_target_chars": 800, "eviction_interval_secs": 5,
    }
    # Every keyword we pass is one the router's initialize_state takes (Serve calls it with them).
    accepted = inspect.signature(PrefixCacheAffinityRouter.initialize_state).parameters
    assert set(router.request_router_kwargs) <= set(accepted)


def test_affinity_defaults_leave_rays_own_defaults():
    router = serve_router_config(request_router={"policy": "prefix_cache_affinity"})
    assert router.request_router_kwargs == {"match_rate_threshold": 0.1}  # no load check, no eviction


def test_power_of_two_is_serves_default_router():
    router = serve_router_config(request_router={"policy": "power_of_two"})
    assert router.get_request_router_class().__name__ == "PowerOfTwoChoicesRequestRouter"
    assert router.request_router_kwargs == {}


def test_no_setting_leaves_the_choice_to_ray():
    # Ray then picks per topology: power of two behind the gateway, round robin with direct streaming.
    llm_config = to_llm_config("chat", parse_app_config(one_model()).models["chat"])
    assert "request_router_config" not in llm_config.deployment_config


@pytest.mark.parametrize(
    "request_router, model, expected",
    [
        ({"policy": "power_of_two", "match_rate_threshold": 0.5}, {},
         r"models\.chat\.request_router: .*match_rate_threshold only apply to policy: prefix_cache_affinity"),
        ({"policy": "prefix_cache_affinity"}, {"task": "embed"},
         r"models\.chat: .*prefix_cache_affinity routes chat and completion prompts; use it with task: generate"),
        ({"policy": "least_loaded"}, {},
         r"models\.chat\.request_router\.policy: Input should be 'power_of_two' or 'prefix_cache_affinity'"),
        ({"policy": "prefix_cache_affinity", "match_rate_threshold": 1.5}, {},
         r"models\.chat\.request_router\.match_rate_threshold: Input should be less than or equal to 1"),
        ({"policy": "prefix_cache_affinity", "eviction": {"threshold_chars": 10, "target_chars": 20}}, {},
         r"eviction\.target_chars \(20\) is greater than eviction\.threshold_chars \(10\); lower target_chars"),
        ({"policy": "prefix_cache_affinity", "imbalance": 3}, {}, r"models\.chat\.request_router\.imbalance: unknown key"),
    ],
)
def test_bad_router_settings_name_the_key_and_the_fix(request_router, model, expected):
    with pytest.raises(ConfigError, match=expected):
        parse_app_config(one_model(request_router=request_router, **model))


@pytest.mark.parametrize(
    "policy, forward_body, direct",
    [
        # HAProxy gives Ray's direct-streaming router no body: affinity would see no prompt.
        ("prefix_cache_affinity", False, False),
        ("prefix_cache_affinity", True, True),
        ("power_of_two", False, True),
    ],
)
def test_affinity_takes_the_gateway_path_unless_haproxy_forwards_bodies(monkeypatch, policy, forward_body, direct):
    monkeypatch.setattr(app_module, "RAY_SERVE_ENABLE_HA_PROXY", True)
    monkeypatch.setattr(app_module, "RAY_SERVE_INGRESS_REQUEST_ROUTER_FORWARD_BODY", forward_body)
    config = parse_app_config(one_model(request_router={"policy": policy}))
    assert uses_direct_streaming(config) is direct
