"""GCS fault tolerance (issue 14, item 3): `gcsFaultTolerance` renders KubeRay v1.7.0's
`spec.rayClusterConfig.gcsFaultToleranceOptions` with credentials only by Secret reference, the chart
refuses what KubeRay would refuse (or what would put a password in plain text) with a message naming
the fix, and the profile that turns it on validates against the upstream RayService schema."""

from __future__ import annotations

from typing import Any, Dict

import pytest
import yaml

from tests.charts import render
from tests.charts.llm_serving_chart import (
    cluster,
    env,
    head_pod,
    helm_error,
    merged,
    GPU_VALUES,
    ray_container,
    rayservice,
    render_chart,
    render_gpu,
    worker_group,
)

HA_PROFILE = render.VALUES / "high-availability-8b.yaml"
SCHEMA_ERROR = "values don't meet the specifications of the schema(s)"
FT_ON = {"gcsFaultTolerance": {"enabled": True, "redisAddress": "redis-master.redis.svc:6379",
                               "redisPassword": {"existingSecret": "gcs-redis", "key": "password"}}}


def ft_options(objects) -> Dict[str, Any]:
    return cluster(objects).get("gcsFaultToleranceOptions")


def validate_upstream(rs: Dict[str, Any]) -> None:
    """The vendored KubeRay v1.7.0 CRD schema, closed like kubeconform -strict (render.validate_against)."""
    render.validate_against(rs, render.upstream_crd_schema("ray.io", "RayService", "v1"))


class TestGcsFaultTolerance:
    def test_off_by_default(self):
        objects = render_gpu()
        assert ft_options(objects) is None
        assert yaml.safe_load((render.CHARTS / "llm-serving" / "values.yaml").read_text())["gcsFaultTolerance"]["enabled"] is False

    def test_on_renders_the_address_and_the_password_by_secret_reference(self):
        options = ft_options(render_gpu(FT_ON))
        assert options == {
            "redisAddress": "redis-master.redis.svc:6379",
            "redisPassword": {"valueFrom": {"secretKeyRef": {"name": "gcs-redis", "key": "password"}}},
        }

    def test_user_name_from_a_secret_and_a_fixed_namespace_with_upgrades_off(self):
        options = ft_options(render_gpu(merged(FT_ON, {
            "gcsFaultTolerance": {"redisUsername": {"existingSecret": "gcs-redis", "key": "user"},
                                  "externalStorageNamespace": "llm-prod"},
            "upgradeStrategy": {"type": "None"},
        })))
        assert options["redisUsername"] == {"valueFrom": {"secretKeyRef": {"name": "gcs-redis", "key": "user"}}}
        assert options["externalStorageNamespace"] == "llm-prod"

    def test_redis_without_a_password_renders_no_password_field(self):
        options = ft_options(render_gpu(merged(FT_ON, {"gcsFaultTolerance": {"redisPassword": {"existingSecret": ""}}})))
        assert options == {"redisAddress": "redis-master.redis.svc:6379"}

    def test_the_operator_not_the_chart_sets_the_redis_environment(self):
        """KubeRay derives RAY_REDIS_ADDRESS/REDIS_PASSWORD (head) and the reconnect timeout (workers)
        from the options and refuses a head that sets the first two itself: the chart sets none."""
        objects = render_gpu(FT_ON)
        for container_env in (env(ray_container(head_pod(objects))), env(ray_container(worker_group(objects, "l40s")["template"]))):
            assert not {"RAY_REDIS_ADDRESS", "REDIS_PASSWORD", "REDIS_USERNAME", "RAY_external_storage_namespace",
                        "RAY_gcs_rpc_server_reconnect_timeout_s"} & set(container_env)
        assert "redis-password" not in cluster(objects)["headGroupSpec"]["rayStartParams"]
        assert "ray.io/ft-enabled" not in (rayservice(objects)["metadata"].get("annotations") or {})

    def test_rendered_options_pass_the_upstream_crd_schema(self):
        rs = rayservice(render_gpu(merged(FT_ON, {"gcsFaultTolerance": {"redisUsername": {"existingSecret": "u"}}})))
        validate_upstream(rs)

    def test_the_profile_turns_it_on_with_the_secret_named(self):
        objects = render_chart(values_files=[HA_PROFILE])  # validated against the project schema
        rs = rayservice(objects)
        validate_upstream(rs)
        assert ft_options(objects) == {
            "redisAddress": "redis-master.redis.svc:6379",
            "redisPassword": {"valueFrom": {"secretKeyRef": {"name": "llm-serving-gcs-redis", "key": "password"}}},
        }
        assert head_pod(objects)["spec"]["nodeSelector"]["llm-serving.io/node-pool"] == "cpu"

    def test_the_profile_is_the_only_one_with_it_and_values_readme_says_why(self):
        on = sorted(p.name for p in render.VALUES.glob("*.yaml")
                    if (yaml.safe_load(p.read_text()).get("gcsFaultTolerance") or {}).get("enabled"))
        assert on == [HA_PROFILE.name]
        readme = (render.VALUES / "README.md").read_text()
        assert "## Which profile has GCS fault tolerance, and why that one" in readme
        assert "`llm-serving-gcs-redis`, key `password`" in readme

    @pytest.mark.parametrize(
        "override, message",
        [
            ({"gcsFaultTolerance": {"redisAddress": ""}},
             "gcsFaultTolerance.enabled is true but gcsFaultTolerance.redisAddress is empty"),
            ({"gcsFaultTolerance": {"redisPassword": "hunter2"}},
             "gcsFaultTolerance.redisPassword is a plain-text password"),
            ({"gcsFaultTolerance": {"redisPassword": {"value": "hunter2"}}},
             "put it in a Secret and reference it: gcsFaultTolerance.redisPassword: {existingSecret: <secret name>, key: <key>}"),
            ({"gcsFaultTolerance": {"redisAddress": "redis://:hunter2@redis:6379"}},
             "gcsFaultTolerance.redisAddress carries credentials (user:password@)"),
            ({"extraEnv": {"RAY_REDIS_ADDRESS": "redis:6379"}},
             "extraEnv.RAY_REDIS_ADDRESS is the KubeRay operator's to set from gcsFaultTolerance"),
            ({"secretEnv": {"REDIS_PASSWORD": {"secretName": "r", "key": "p"}}},
             "secretEnv.REDIS_PASSWORD is the KubeRay operator's to set from gcsFaultTolerance"),
            ({"extraEnv": {"RAY_external_storage_namespace": "x"}},
             "extraEnv.RAY_external_storage_namespace is the KubeRay operator's to set"),
            ({"head": {"rayStartParams": {"num-cpus": "0", "redis-password": "hunter2"}}},
             "head.rayStartParams.redis-password is refused by the KubeRay operator"),
            ({"gcsFaultTolerance": {"externalStorageNamespace": "llm-prod"}},
             "gcsFaultTolerance.externalStorageNamespace is fixed (\"llm-prod\") but upgradeStrategy.type is NewCluster"),
        ],
        ids=["no-address", "password-string", "password-value", "credentials-in-address", "env-address",
             "secret-env-password", "env-namespace", "start-param-password", "fixed-namespace-with-upgrades"],
    )
    def test_refused_with_the_fix(self, override, message):
        error = helm_error(merged(merged(GPU_VALUES, FT_ON), override))
        assert message in error, error

    def test_a_plain_password_is_refused_even_with_the_feature_off(self):
        error = helm_error(merged(GPU_VALUES, {"gcsFaultTolerance": {"redisPassword": "hunter2"}}))
        assert "plain-text password" in error

    @pytest.mark.parametrize(
        "override, location",
        [
            ({"gcsFaultTolerance": {"redisAdress": "r:6379"}}, "/gcsFaultTolerance"),
            ({"gcsFaultTolerance": {"redisAddress": "redis 6379"}}, "/gcsFaultTolerance/redisAddress"),
            ({"gcsFaultTolerance": {"redisUsername": {"existingSecret": "Not_A_Name"}}}, "/gcsFaultTolerance/redisUsername/existingSecret"),
            ({"gcsFaultTolerance": {"redisUsername": "admin"}}, "/gcsFaultTolerance/redisUsername"),
        ],
        ids=["typo", "space-in-address", "bad-secret-name", "username-not-by-reference"],
    )
    def test_schema_names_the_bad_key(self, override, location):
        error = helm_error(merged(GPU_VALUES, override))
        assert SCHEMA_ERROR in error and f"at '{location}'" in error, error
