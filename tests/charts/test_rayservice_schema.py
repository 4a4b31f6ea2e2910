"""The project's RayService schema (tests/schemas/ray.io/rayservice_v1.json), checked against the
upstream KubeRay v1.7.0 CRD schema in tests/schemas/upstream: every field it allows exists upstream,
it is stricter where KubeRay's Go code is, and every RayService the chart renders passes both."""

from __future__ import annotations

import copy
import json
from typing import Any, Dict, Iterator, List, Tuple

import jsonschema
import pytest

from tests.charts import render
from tests.charts.llm_serving_chart import GPU_VALUES, PROFILES, merged, rayservice, render_chart, render_gpu

PROJECT_SCHEMA_PATH = render.PROJECT_SCHEMAS / "ray.io" / "rayservice_v1.json"
KUBERNETES_REF = "https://kubernetes.io/api/_definitions.json#"

VARIANTS = {
    "incremental-upgrade": {
        "upgradeStrategy": {"type": "NewClusterWithIncrementalUpgrade", "clusterUpgradeOptions": {"gatewayClassName": "istio"}}
    },
    "no-autoscaler": {"autoscaler": {"enabled": False}, "workerGroups": {"l40s": {"minReplicas": 1}}},
    "gcs-fault-tolerance": {
        "gcsFaultTolerance": {"enabled": True, "redisAddress": "rediss://redis.example:6380",
                              "redisPassword": {"existingSecret": "gcs-redis"}, "redisUsername": {"existingSecret": "gcs-redis"},
                              "externalStorageNamespace": "llm"},
        "upgradeStrategy": {"type": "None"},
    },
    "everything-optional": {
        "initializingTimeout": "1h",
        "serveService": {"type": "LoadBalancer", "annotations": {"a": "b"}, "labels": {"c": "d"}},
        "secretEnv": {"HF_TOKEN": {"secretName": "hf", "key": "token", "optional": True}},
        "extraEnv": {"VLLM_LOGGING_LEVEL": "INFO"},
        "modelCache": {"type": "hostPath"},
        "imagePullSecrets": ["regcred"],
        "head": {"tolerations": [{"key": "k", "operator": "Exists"}], "affinity": {"nodeAffinity": {}}, "priorityClassName": "p"},
        "workerGroups": {"l40s": {"idleTimeoutSeconds": 60, "podLabels": {"team": "ml"}, "rayStartParams": {"object-store-memory": "1000000000"}}},
    },
}


def project_schema() -> Dict[str, Any]:
    return json.loads(PROJECT_SCHEMA_PATH.read_text())


def upstream_schema() -> Dict[str, Any]:
    schema = render.upstream_crd_schema("ray.io", "RayService", "v1")
    assert schema is not None, f"upstream schema missing: {render.UPSTREAM_CRD_SCHEMAS}/ray.io/rayservice_v1.json"
    return schema


CASES = [profile.stem for profile in PROFILES] + list(VARIANTS)


def rendered_rayservice(case: str) -> Dict[str, Any]:
    if case in VARIANTS:
        return rayservice(render_gpu(VARIANTS[case]))
    return rayservice(render_chart(values_files=[render.VALUES / f"{case}.yaml"]))


def test_project_schema_is_a_valid_schema():
    jsonschema.Draft202012Validator.check_schema(project_schema())


@pytest.mark.parametrize("case", CASES)
def test_rendered_rayservice_passes_upstream_and_project_schemas(case):
    rs = rendered_rayservice(case)
    render.validate_against(rs, upstream_schema())
    render.validate_against(rs, project_schema())


def local_fields(schema: Dict[str, Any], node: Dict[str, Any], path: Tuple[str, ...]) -> Iterator[Tuple[Tuple[str, ...], Dict[str, Any]]]:
    """(path, node) for every object-with-properties in the project schema, following local $refs
    and stopping at Kubernetes' own definitions (checked by kubernetes-validate's schemas)."""
    if "$ref" in node:
        ref = node["$ref"]
        if ref.startswith(KUBERNETES_REF):
            return
        assert ref.startswith("#/$defs/"), ref
        node = schema["$defs"][ref[len("#/$defs/"):]]
    for part in node.get("allOf", []):
        yield from local_fields(schema, part, path)
    if "properties" in node:
        yield path, node
        for key, child in node["properties"].items():
            yield from local_fields(schema, child, path + (key,))
    if isinstance(node.get("items"), dict):
        yield from local_fields(schema, node["items"], path + ("[]",))


def upstream_node(path: Tuple[str, ...]) -> Dict[str, Any]:
    node = upstream_schema()
    for key in path:
        node = node["items"] if key == "[]" else node["properties"][key]
    return node


def test_every_field_the_project_allows_exists_upstream():
    schema = project_schema()
    missing: List[str] = []
    for path, node in local_fields(schema, schema, ()):
        if path[:1] == ("metadata",):
            continue  # Kubernetes ObjectMeta (upstream leaves it untyped); its keys are data, not CRD fields
        upstream = upstream_node(path)
        upstream_fields = set(upstream.get("properties", {}))
        for key in node["properties"]:
            if key not in upstream_fields:
                missing.append(".".join(path + (key,)))
    assert not missing, f"fields the upstream CRD does not have: {missing}"


def test_the_walk_reaches_deep_fields():
    schema = project_schema()
    paths = {".".join(path) for path, _ in local_fields(schema, schema, ())}
    assert "spec.upgradeStrategy.clusterUpgradeOptions" in paths
    assert "spec.rayClusterConfig.workerGroupSpecs.[]" in paths
    assert "spec.rayClusterConfig.headGroupSpec.template.spec" in paths


def rayservice_with(change) -> Dict[str, Any]:
    rs = copy.deepcopy(rayservice(render_gpu()))
    change(rs)
    return rs


STRICTER_THAN_UPSTREAM = {
    "deprecated-threshold": lambda rs: rs["spec"].update(serviceUnhealthySecondThreshold=900),
    "unknown-upgrade-type": lambda rs: rs["spec"]["upgradeStrategy"].update(type="BlueGreen"),
    "incremental-without-options": lambda rs: rs["spec"]["upgradeStrategy"].update(type="NewClusterWithIncrementalUpgrade"),
    "name-too-long-for-serve-svc": lambda rs: rs["metadata"].update(name="a" * 54),
    "bad-initializing-timeout": lambda rs: rs["metadata"].update(annotations={"ray.io/initializing-timeout": "0"}),
    "group-name-not-a-label": lambda rs: rs["spec"]["rayClusterConfig"]["workerGroupSpecs"][0].update(groupName="GPU_1"),
    "no-ray-version": lambda rs: rs["spec"]["rayClusterConfig"].pop("rayVersion"),
    "plain-redis-password": lambda rs: rs["spec"]["rayClusterConfig"].update(
        gcsFaultToleranceOptions={"redisAddress": "redis:6379", "redisPassword": {"value": "hunter2"}}),
    "gcs-ft-without-address": lambda rs: rs["spec"]["rayClusterConfig"].update(gcsFaultToleranceOptions={}),
}


@pytest.mark.parametrize("change", STRICTER_THAN_UPSTREAM.values(), ids=STRICTER_THAN_UPSTREAM.keys())
def test_project_schema_catches_what_the_crd_lets_through(change):
    rs = rayservice_with(change)
    upstream_errors = list(jsonschema.Draft7Validator(upstream_schema()).iter_errors(rs))
    assert not upstream_errors, "the upstream schema already catches this; the case proves nothing"
    with pytest.raises(AssertionError, match="does not match its schema"):
        render.validate_against(rs, project_schema())


@pytest.mark.parametrize(
    "change",
    [
        lambda rs: rs["spec"].update(serveConfigV2={"applications": []}),
        lambda rs: rs["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0].update(imagePullPolicyy="x"),
        lambda rs: rs["spec"]["rayClusterConfig"]["workerGroupSpecs"][0].pop("maxReplicas"),
        lambda rs: rs["spec"].update(notAField=True),
    ],
    ids=["serve-config-as-mapping", "container-typo", "group-without-max", "unknown-spec-field"],
)
def test_both_schemas_reject_broken_objects(change):
    rs = rayservice_with(change)
    for schema in (upstream_schema(), project_schema()):
        with pytest.raises(AssertionError, match="does not match its schema"):
            render.validate_against(rs, schema)


def test_render_uses_the_project_schema_for_rayservices():
    assert render.crd_schema("ray.io", "RayService", "v1") == project_schema()
    assert merged(GPU_VALUES, {})  # the fixture values are complete (render_gpu above relies on them)
