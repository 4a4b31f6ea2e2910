"""AppConfig: what the app accepts, and the messages for what it rejects."""

import pytest

from llm_serving.app import to_llm_config
from llm_serving.config import ConfigError, parse_app_config
from llm_serving.serve_config import AppBlock


def minimal(**model_overrides):
    return {"models": {"chat": {"source": "org/model", **model_overrides}}, "gateway": {"auth": {"mode": "none"}}}


def test_defaults_set_real_back_pressure_and_autoscaling_values():
    config = parse_app_config(minimal())
    model = config.models["chat"]
    assert model.max_ongoing_requests == 64
    assert model.autoscaling.target_ongoing_requests == 16
    assert config.gateway.ingress.max_ongoing_requests == 1024


def test_default_auth_requires_keys():
    with pytest.raises(ConfigError, match=r"args: gateway\.auth\.mode is api_key \(the default\) but no keys source is set"):
        parse_app_config({"models": {"chat": {"source": "org/model"}}})


@pytest.mark.parametrize(
    "args, expected",
    [
        (minimal(sourc="x"), r"args\.models\.chat\.sourc: unknown key"),
        (minimal(tensor_parallel_size="two"), r"args\.models\.chat\.tensor_parallel_size: Input should be a valid integer"),
        (minimal(task="classify"), r"args\.models\.chat\.task: Input should be 'generate' or 'embed'"),
        (minimal(engine_kwargs={"tensor_parallel_size": 2}), r"engine_kwargs\.tensor_parallel_size is set by the app; set tensor_parallel_size instead"),
        (minimal(device="cpu", accelerator_type="L40S"), r"accelerator_type applies to GPUs"),
        (minimal(autoscaling={"min_replicas": 3, "max_replicas": 2}), r"min_replicas \(3\) is greater than max_replicas \(2\)"),
        ({"models": {}, "gateway": {"auth": {"mode": "none"}}}, r"args\.models: Dictionary should have at least 1 item"),
        ({"models": {"bad name!": {"source": "x"}}, "gateway": {"auth": {"mode": "none"}}}, r"model name 'bad name!' is not allowed"),
    ],
)
def test_invalid_args_name_the_key_and_the_fix(args, expected):
    with pytest.raises(ConfigError, match=expected):
        parse_app_config(args)


def test_gpu_model_reserves_one_bundle_per_tensor_parallel_rank():
    config = parse_app_config(minimal(tensor_parallel_size=4, accelerator_type="L40S"))
    llm_config = to_llm_config("chat", config.models["chat"])
    assert llm_config.engine_kwargs["tensor_parallel_size"] == 4
    assert llm_config.placement_group_config == {"bundles": [{"GPU": 1}] * 4, "strategy": "STRICT_PACK"}
    assert llm_config.accelerator_type == "L40S"


def test_embedding_model_uses_the_pooling_runner_on_cpu():
    config = parse_app_config(minimal(task="embed", device="cpu", max_model_len=256))
    llm_config = to_llm_config("chat", config.models["chat"])
    assert llm_config.engine_kwargs["runner"] == "pooling"
    assert llm_config.engine_kwargs["max_model_len"] == 256
    assert llm_config.placement_group_config == {"bundles": [{"CPU": 1}]}
    assert llm_config.deployment_config["max_ongoing_requests"] == 64
    assert llm_config.deployment_config["autoscaling_config"]["target_ongoing_requests"] == 16


def test_scale_to_zero_starts_one_replica_so_a_fresh_deploy_answers():
    config = parse_app_config(minimal(autoscaling={"min_replicas": 0, "max_replicas": 2}))
    assert config.models["chat"].autoscaling.to_serve()["initial_replicas"] == 1


def test_json_schema_has_a_description_for_every_property():
    def walk(schema, path):
        for name, prop in schema.get("properties", {}).items():
            assert "description" in prop or "$ref" in prop or "allOf" in prop, f"{path}.{name} has no description"
        for name, definition in schema.get("$defs", {}).items():
            walk(definition, name)

    walk(AppBlock.model_json_schema(), "AppBlock")  # the build args and traffic
