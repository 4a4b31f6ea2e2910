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


def with_batch(**batch):
    return {**minimal(), "batch": {"store_uri": "/data/batch", **batch}}


def test_batch_workers_run_at_niceness_19_unless_told():
    assert parse_app_config(with_batch()).batch.worker_niceness == 19
    assert parse_app_config(with_batch(worker_niceness=0)).batch.worker_niceness == 0
    assert parse_app_config(with_batch(worker_niceness=19)).batch.worker_niceness == 19


@pytest.mark.parametrize(
    "niceness, expected",
    [
        (20, r"args\.batch\.worker_niceness: Input should be less than or equal to 19"),
        (-1, r"args\.batch\.worker_niceness: Input should be greater than or equal to 0"),
        (2.5, r"args\.batch\.worker_niceness: Input should be a valid integer"),
    ],
)
def test_batch_worker_niceness_outside_0_to_19_names_the_key(niceness, expected):
    with pytest.raises(ConfigError, match=expected):
        parse_app_config(with_batch(worker_niceness=niceness))


def test_batch_rate_is_unbounded_unless_told_and_must_be_positive():
    assert parse_app_config(with_batch()).batch.max_rows_per_s is None
    assert parse_app_config(with_batch(max_rows_per_s=2.5)).batch.max_rows_per_s == 2.5
    with pytest.raises(ConfigError, match=r"args\.batch\.max_rows_per_s: Input should be greater than 0"):
        parse_app_config(with_batch(max_rows_per_s=0))


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


def test_worker_group_ties_every_bundle_to_the_groups_resource():
    """Issue 13 item 2: the bundles ask 0.001 of the resource the group advertises (1 per node)."""
    config = parse_app_config(minimal(tensor_parallel_size=4, accelerator_type="L40S", worker_group="l40s-4x"))
    llm_config = to_llm_config("chat", config.models["chat"])
    bundle = {"GPU": 1, "llm-serving-group:l40s-4x": 0.001}
    assert llm_config.placement_group_config == {"bundles": [bundle] * 4, "strategy": "STRICT_PACK"}


def test_the_group_resource_never_looks_like_a_placement_group_resource():
    # Ray names placement-group resources <resource>_group_<id> (ray/_private/utils.py); the
    # autoscaler and the GCS would read a custom resource matching those patterns as one of them.
    from ray._private.utils import (
        PLACEMENT_GROUP_INDEXED_BUNDLED_RESOURCE_PATTERN,
        PLACEMENT_GROUP_WILDCARD_RESOURCE_PATTERN,
    )

    from llm_serving.config import WORKER_GROUP_RESOURCE_PREFIX

    name = WORKER_GROUP_RESOURCE_PREFIX + "l40s-4x"
    assert not PLACEMENT_GROUP_INDEXED_BUNDLED_RESOURCE_PATTERN.match(name)
    assert not PLACEMENT_GROUP_WILDCARD_RESOURCE_PATTERN.match(name)


@pytest.mark.parametrize(
    "overrides, expected",
    [
        ({"worker_group": "L40S_4x"}, r"args\.models\.chat\.worker_group: String should match pattern"),
        ({"device": "cpu", "worker_group": "cpu"}, r"worker_group applies to GPUs; remove it or set device: gpu"),
    ],
)
def test_invalid_worker_group(overrides, expected):
    with pytest.raises(ConfigError, match=expected):
        parse_app_config(minimal(**overrides))


GIB = 2**30


def ray_default_object_store(memory_limit: int, shm_size: int, monkeypatch) -> int:
    """What Ray 2.60 picks when `ray start` has no --object-store-memory, in a pod with this memory
    limit and /dev/shm (ray/_private/utils.py, resolve_object_store_memory: 30% of the available
    memory, DEFAULT_OBJECT_STORE_MEMORY_PROPORTION in ray/_private/ray_constants.py, capped at
    max(10 GB, 95% of /dev/shm)). The available memory at start is the limit at most."""
    import ray._private.utils as ray_utils

    monkeypatch.setattr(ray_utils.sys, "platform", "linux")
    monkeypatch.setattr(ray_utils, "get_shared_memory_bytes", lambda: shm_size)
    return ray_utils.resolve_object_store_memory(memory_limit)


@pytest.mark.parametrize(
    "pod, memory_limit, shm_size",
    [("1-GPU worker", 28 * GIB, 8 * GIB), ("head", 8 * GIB, 2 * GIB), ("dev-cpu head", 3 * GIB, 512 * 2**20)],
)
def test_rays_default_object_store_outgrows_dev_shm_and_the_charts_does_not(pod, memory_limit, shm_size, monkeypatch):
    """Issue 13 item 3. Ray then puts the store on disk: services.py, determine_plasma_store_config
    ("This will harm performance"). The chart passes 80% of /dev/shm instead
    (templates/_helpers.tpl, llm-serving.ray.objectStoreBytes; the rendered value is checked in
    tests/charts/test_llm_serving_rayservice.py)."""
    from ray._private.ray_constants import OBJECT_STORE_MINIMUM_MEMORY_BYTES

    assert ray_default_object_store(memory_limit, shm_size, monkeypatch) > shm_size, pod
    charts = shm_size * 4 // 5
    assert OBJECT_STORE_MINIMUM_MEMORY_BYTES <= charts <= shm_size
    import ray._private.utils as ray_utils

    assert ray_utils.resolve_object_store_memory(memory_limit, charts) == charts  # kept as given
