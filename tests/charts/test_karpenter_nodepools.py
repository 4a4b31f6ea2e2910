"""charts/karpenter-nodepools: NodePools and EC2NodeClasses, validated against the Karpenter v1.14.1 schemas.

render.render_chart validates every object against tests/schemas/upstream; these tests also validate
the Karpenter objects strictly (unknown fields are errors, like kubeconform -strict).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Dict, List

import jsonschema
import pytest
import yaml

from tests.charts import render
from tests.charts.values_docs import assert_same_keys, undocumented_keys

CHART = "karpenter-nodepools"
CHART_DIR = render.CHARTS / CHART
KARPENTER_APIS = ["karpenter.sh/v1", "karpenter.k8s.aws/v1"]
BASE = {"clusterName": "llm-prod", "assumeApiVersions": KARPENTER_APIS}
PLACEMENT_LABEL = "llm-serving.io/node-pool"
GPU_TAINT = {"key": "nvidia.com/gpu", "value": "true", "effect": "NoSchedule"}


def strict_validate(obj: Dict[str, Any]) -> None:
    group, _, version = obj["apiVersion"].rpartition("/")
    schema = render.crd_schema(group, obj["kind"], version)  # already closed (strict) by render
    errors = list(jsonschema.Draft7Validator(schema).iter_errors(obj))
    assert not errors, [f"{'.'.join(map(str, e.path))}: {e.message}" for e in errors]


def merge(base: Dict[str, Any], extra: Dict[str, Any]) -> Dict[str, Any]:
    result = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = merge(result[key], value)
        else:
            result[key] = value
    return result


def render_objects(values: Dict[str, Any] | None = None, **kwargs: Any) -> List[Dict[str, Any]]:
    objects = render.render_chart(CHART, values=merge(BASE, values or {}), **kwargs)
    for obj in objects:
        strict_validate(obj)
    return objects


def nodepools(objects: List[Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in render.by_kind(objects, "NodePool")}


def nodeclasses(objects: List[Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in render.by_kind(objects, "EC2NodeClass")}


def requirements(pool: Dict[str, Any]) -> Dict[str, Dict[str, Any]]:
    return {r["key"]: r for r in pool["spec"]["template"]["spec"]["requirements"]}


class TestChartAndValues:
    def test_chart_yaml(self):
        chart = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())
        assert chart["apiVersion"] == "v2" and chart["name"] == CHART
        for key in ("version", "appVersion", "description", "type", "home", "sources", "maintainers", "keywords", "kubeVersion"):
            assert chart.get(key), f"Chart.yaml lacks {key}"

    def test_every_key_has_a_helm_docs_comment(self):
        schema = json.loads((CHART_DIR / "values.schema.json").read_text())
        missing = undocumented_keys((CHART_DIR / "values.yaml").read_text(), schema)
        assert not missing, f"keys without a '# --' comment: {missing}"

    def test_schema_and_values_have_the_same_keys(self):
        schema = json.loads((CHART_DIR / "values.schema.json").read_text())
        values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
        assert_same_keys(values, schema, schema, "")

    def test_readme_states_the_placement_contract(self):
        readme = (CHART_DIR / "README.md").read_text()
        assert "llm-serving.io/node-pool" in readme and "nvidia.com/gpu=true:NoSchedule" in readme
        assert "karpenter.sh/do-not-disrupt" in readme


class TestCiScenarios:
    @pytest.mark.parametrize("values_file", sorted((CHART_DIR / "ci").glob("*-values.yaml")), ids=lambda p: p.name)
    def test_renders_validates_and_lints(self, values_file: Path):
        objects = render.render_chart(CHART, values_files=[values_file])
        assert render.by_kind(objects, "NodePool") and render.by_kind(objects, "EC2NodeClass")
        for obj in objects:
            strict_validate(obj)
        render.helm("lint", "--strict", str(CHART_DIR), "-f", str(values_file))


class TestCapabilities:
    def test_fails_clearly_without_karpenter(self):
        with pytest.raises(render.HelmError, match=r"does not serve karpenter.sh/v1 and karpenter.k8s.aws/v1: install Karpenter"):
            render.render_chart(CHART, values={"clusterName": "x"})

    def test_renders_when_the_cluster_serves_the_apis(self):
        objects = render.render_chart(CHART, values={"clusterName": "x"}, api_versions=KARPENTER_APIS)
        assert set(nodepools(objects)) == {"gpu-l4", "gpu-l40s", "gpu-l40s-4x", "cpu"}

    def test_one_api_is_not_enough(self):
        with pytest.raises(render.HelmError, match="does not serve"):
            render.render_chart(CHART, values={"clusterName": "x"}, api_versions=["karpenter.sh/v1"])


class TestClusterScoped:
    def test_no_namespace_on_karpenter_objects(self):
        for obj in render_objects(namespace="karpenter"):
            assert "namespace" not in obj["metadata"], obj["metadata"]


class TestPlacementContract:
    """The keys the llm-serving chart schedules on: one source of truth."""

    def test_gpu_pools_are_tainted_and_labelled_with_their_name(self):
        pools = nodepools(render_objects())
        for name in ("gpu-l4", "gpu-l40s", "gpu-l40s-4x"):
            template = pools[name]["spec"]["template"]
            assert template["metadata"]["labels"][PLACEMENT_LABEL] == name
            assert template["spec"]["taints"] == [GPU_TAINT]

    def test_cpu_pool_is_labelled_cpu_and_untainted(self):
        template = nodepools(render_objects())["cpu"]["spec"]["template"]
        assert template["metadata"]["labels"] == {PLACEMENT_LABEL: "cpu"}
        assert "taints" not in template["spec"]

    def test_extra_taints_keep_the_gpu_taint(self):
        extra = {"key": "llm-serving.io/spot", "value": "true", "effect": "NoSchedule"}
        pools = nodepools(render_objects({"nodePools": {"gpu-spot": {"enabled": True, "taints": [extra]}}}))
        assert pools["gpu-spot"]["spec"]["template"]["spec"]["taints"] == [GPU_TAINT, extra]

    def test_placement_label_cannot_be_overridden(self):
        with pytest.raises(render.HelmError, match=r"nodePools.gpu-l4.labels may not set \"llm-serving.io/node-pool\""):
            render_objects({"nodePools": {"gpu-l4": {"labels": {PLACEMENT_LABEL: "other"}}}})


class TestNodePools:
    def test_default_pools(self):
        assert set(nodepools(render_objects())) == {"gpu-l4", "gpu-l40s", "gpu-l40s-4x", "cpu"}

    @pytest.mark.parametrize(
        "pool, families, gpus",
        [
            ("gpu-a10g", ["g5"], "1"), ("gpu-l4", ["g6"], "1"), ("gpu-l40s", ["g6e"], "1"), ("gpu-l40s-4x", ["g6e"], "4"),
            ("gpu-a100", ["p4d"], "8"), ("gpu-h100", ["p5"], "8"), ("gpu-spot", ["g5", "g6", "g6e"], "1"),
        ],
    )
    def test_gpu_instance_families_and_one_gpu_count(self, pool, families, gpus):
        """One GPU count per pool: Karpenter cannot pack pending 1-GPU pods onto a 4-GPU node (#5379)."""
        pools = nodepools(render_objects({"nodePools": {pool: {"enabled": True}}}))
        found = requirements(pools[pool])
        assert found["karpenter.k8s.aws/instance-family"] == {"key": "karpenter.k8s.aws/instance-family", "operator": "In", "values": families}
        assert found["karpenter.k8s.aws/instance-gpu-manufacturer"]["values"] == ["nvidia"]
        assert found["karpenter.k8s.aws/instance-gpu-count"] == {"key": "karpenter.k8s.aws/instance-gpu-count", "operator": "In", "values": [gpus]}

    def test_cpu_pool_has_no_gpu_count(self):
        assert "karpenter.k8s.aws/instance-gpu-count" not in requirements(nodepools(render_objects())["cpu"])

    def test_capacity_type_and_architecture(self):
        pools = nodepools(render_objects({"nodePools": {"gpu-spot": {"enabled": True}}}))
        assert requirements(pools["gpu-spot"])["karpenter.sh/capacity-type"]["values"] == ["spot"]
        assert requirements(pools["gpu-l4"])["karpenter.sh/capacity-type"]["values"] == ["on-demand"]
        assert requirements(pools["gpu-l4"])["kubernetes.io/arch"]["values"] == ["amd64"]
        assert requirements(pools["gpu-l4"])["kubernetes.io/os"]["values"] == ["linux"]
        assert pools["gpu-spot"]["spec"]["weight"] < pools["gpu-l4"]["spec"]["weight"]

    def test_cpu_pool_for_ray_heads(self):
        found = requirements(nodepools(render_objects())["cpu"])
        assert found["karpenter.k8s.aws/instance-category"]["values"] == ["m"]
        assert found["karpenter.k8s.aws/instance-generation"] == {"key": "karpenter.k8s.aws/instance-generation", "operator": "Gt", "values": ["5"]}
        assert "karpenter.k8s.aws/instance-family" not in found

    def test_limits_expiry_and_node_class(self):
        pool = nodepools(render_objects())["gpu-l4"]["spec"]
        assert pool["limits"] == {"nvidia.com/gpu": "16"}
        assert pool["template"]["spec"]["expireAfter"] == "720h"
        assert pool["template"]["spec"]["terminationGracePeriod"] == "2h"
        assert pool["template"]["spec"]["nodeClassRef"] == {"group": "karpenter.k8s.aws", "kind": "EC2NodeClass", "name": "gpu"}

    def test_the_head_pool_never_expires_by_default(self):
        """Issue 14: the `cpu` pool hosts the Ray heads; expiry is forceful, and a head without GCS
        fault tolerance takes every replica with it. GPU pools keep their monthly expiry."""
        pools = nodepools(render_objects())
        assert pools["cpu"]["spec"]["template"]["spec"]["expireAfter"] == "Never"
        assert pools["gpu-l40s"]["spec"]["template"]["spec"]["expireAfter"] == "720h"
        expiring = nodepools(render_objects({"nodePoolDefaults": {"cpu": {"expireAfter": "720h"}}}))
        assert expiring["cpu"]["spec"]["template"]["spec"]["expireAfter"] == "720h"

    def test_a_pool_key_overrides_one_default_including_false_and_zero_like_values(self):
        pools = nodepools(render_objects({"rayImageArchitectures": ["amd64", "arm64"], "nodePools": {"gpu-l4": {"expireAfter": "Never", "architectures": ["arm64"]}}}))
        assert pools["gpu-l4"]["spec"]["template"]["spec"]["expireAfter"] == "Never"
        assert requirements(pools["gpu-l4"])["kubernetes.io/arch"]["values"] == ["arm64"]
        assert pools["gpu-l40s"]["spec"]["template"]["spec"]["expireAfter"] == "720h"

    def test_disabling_a_default_pool(self):
        assert "gpu-l40s" not in nodepools(render_objects({"nodePools": {"gpu-l40s": {"enabled": False}}}))

    def test_a_new_pool_from_a_profile(self):
        pools = nodepools(render_objects({"nodePools": {"gpu-l4-4x": {"enabled": True, "type": "gpu", "instanceFamilies": ["g6"], "gpusPerNode": 4}}}))
        assert pools["gpu-l4-4x"]["spec"]["template"]["metadata"]["labels"][PLACEMENT_LABEL] == "gpu-l4-4x"
        assert requirements(pools["gpu-l4-4x"])["karpenter.k8s.aws/instance-gpu-count"]["values"] == ["4"]


class TestDisruption:
    """Serving pods are never evicted to repack nodes; voluntary disruption goes one node at a time."""

    @pytest.mark.parametrize("pool", ["gpu-l4", "gpu-l40s", "gpu-l40s-4x", "cpu"])
    def test_only_empty_nodes_are_consolidated(self, pool):
        disruption = nodepools(render_objects())[pool]["spec"]["disruption"]
        assert disruption["consolidationPolicy"] == "WhenEmpty"
        assert disruption["consolidateAfter"] in {"15m", "10m"}
        assert disruption["budgets"] == [{"nodes": "1"}]

    def test_budget_map_becomes_a_list(self):
        budgets = {"business-hours": {"nodes": "0", "reasons": ["Drifted"], "schedule": "0 8 * * mon-fri", "duration": "10h"}, "one-at-a-time": {"nodes": "1"}}
        values = {"nodePools": {"gpu-l4": {"disruption": {"consolidationPolicy": "WhenEmpty", "consolidateAfter": "30m", "budgets": budgets}}}}
        disruption = nodepools(render_objects(values))["gpu-l4"]["spec"]["disruption"]
        assert disruption == {
            "consolidationPolicy": "WhenEmpty",
            "consolidateAfter": "30m",
            "budgets": [{"nodes": "0", "reasons": ["Drifted"], "schedule": "0 8 * * mon-fri", "duration": "10h"}, {"nodes": "1"}],
        }


class TestEC2NodeClass:
    def test_al2023_defaults(self):
        classes = nodeclasses(render_objects())
        gpu = classes["gpu"]["spec"]
        assert gpu["amiSelectorTerms"] == [{"alias": "al2023@latest"}]
        assert gpu["role"] == "KarpenterNodeRole-llm-prod" and "instanceProfile" not in gpu
        discovery = [{"tags": {"karpenter.sh/discovery": "llm-prod"}}]
        assert gpu["subnetSelectorTerms"] == discovery and gpu["securityGroupSelectorTerms"] == discovery
        assert gpu["blockDeviceMappings"] == [
            {"deviceName": "/dev/xvda", "rootVolume": True, "ebs": {"volumeSize": "50Gi", "volumeType": "gp3", "iops": 3000, "throughput": 125, "encrypted": True, "deleteOnTermination": True}}
        ]
        assert gpu["instanceStorePolicy"] == "RAID0"
        assert gpu["metadataOptions"]["httpTokens"] == "required" and gpu["metadataOptions"]["httpPutResponseHopLimit"] == 1
        assert "instanceStorePolicy" not in classes["cpu"]["spec"]

    def test_bottlerocket_has_an_os_and_a_data_volume(self):
        values = {"nodeClasses": {"gpu": {"amiFamily": "bottlerocket", "amiVersion": "1.40.0"}}}
        gpu = nodeclasses(render_objects(values))["gpu"]["spec"]
        assert gpu["amiSelectorTerms"] == [{"alias": "bottlerocket@1.40.0"}]
        devices = {d["deviceName"]: d for d in gpu["blockDeviceMappings"]}
        assert devices["/dev/xvda"]["ebs"]["volumeSize"] == "4Gi" and "rootVolume" not in devices["/dev/xvda"]
        assert devices["/dev/xvdb"]["rootVolume"] is True and devices["/dev/xvdb"]["ebs"]["volumeSize"] == "50Gi"

    def test_instance_profile_instead_of_role(self):
        gpu = nodeclasses(render_objects({"nodeClasses": {"gpu": {"instanceProfile": "gpu-nodes"}}}))["gpu"]["spec"]
        assert gpu["instanceProfile"] == "gpu-nodes" and "role" not in gpu

    def test_only_used_classes_are_rendered(self):
        values = {"nodePools": {"cpu": {"enabled": False}}}
        assert set(nodeclasses(render_objects(values))) == {"gpu"}


class TestKeepOnUninstall:
    """Deleting a NodePool terminates all of its nodes; keepOnUninstall lets Helm leave the pools."""

    def test_off_by_default(self):
        for obj in render_objects():
            assert "helm.sh/resource-policy" not in obj["metadata"].get("annotations", {}), obj["metadata"]["name"]

    def test_on_keeps_every_nodepool_and_nodeclass(self):
        objects = render_objects({"keepOnUninstall": True})
        assert {o["kind"] for o in objects} == {"NodePool", "EC2NodeClass"}
        for obj in objects:
            assert obj["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}, obj["metadata"]["name"]


class TestImageArchitectures:
    def test_a_multi_arch_image_allows_graviton_heads(self):
        values = {"rayImageArchitectures": ["amd64", "arm64"], "nodePools": {"cpu": {"architectures": ["arm64"]}}}
        assert requirements(nodepools(render_objects(values))["cpu"])["kubernetes.io/arch"]["values"] == ["arm64"]


class TestBadValues:
    @pytest.mark.parametrize(
        "values, message",
        [
            ({"clusterName": ""}, "clusterName is empty, and nodeClasses.cpu needs it"),
            ({"nodeClasses": {"gpu": {"role": "a", "instanceProfile": "b"}}}, "sets both role and instanceProfile"),
            ({"nodePools": {"gpu-l4": {"nodeClass": "missing"}}}, 'nodePools.gpu-l4.nodeClass="missing" is not a key of nodeClasses'),
            ({"nodePools": {"gpu-l4": {"labels": {"karpenter.sh/foo": "x"}}}}, 'labels may not set "karpenter.sh/foo"'),
            ({"nodePools": {"gpu-l4": {"requirements": {"karpenter.sh/capacity-type": {"operator": "In", "values": ["spot"]}}}}}, "Set nodePools.gpu-l4.capacityTypes instead"),
            ({"nodePools": {"gpu-l4": {"requirements": {"karpenter.k8s.aws/bogus": {"operator": "Exists"}}}}}, "Karpenter does not allow requirements on \"karpenter.k8s.aws/bogus\""),
            ({"nodePools": {"gpu-l4": {"requirements": {"example.com/x": {"operator": "In"}}}}}, "operator In needs values"),
            ({"nodePools": {"gpu-l4": {"requirements": {"karpenter.k8s.aws/instance-cpu": {"operator": "Gt", "values": ["a"]}}}}}, "needs exactly one non-negative integer"),
            ({"nodePools": {"gpu-l4": {"requirements": {"karpenter.k8s.aws/instance-gpu-count": {"operator": "In", "values": ["1", "4"]}}}}}, "Set nodePools.gpu-l4.gpusPerNode instead"),
            ({"nodePools": {"cpu": {"gpusPerNode": 1}}}, "nodePools.cpu sets gpusPerNode, but it is a cpu pool"),
            ({"nodePools": {"gpu-l4": {"gpusPerNode": 0}}}, "gpusPerNode"),
            (
                {"nodePools": {"cpu": {"architectures": ["arm64"]}}},
                "nodePools.cpu.architectures includes arm64, but the llm-serving image is built for amd64 only (rayImageArchitectures): Ray pods on those nodes would fail with exec format error. Set nodePools.cpu.architectures: [\"amd64\"], or publish a multi-arch image and add arm64 to rayImageArchitectures.",
            ),
            ({"nodePools": {"gpu-l4": {"architectures": ["amd64", "arm64"]}}}, "nodePools.gpu-l4.architectures includes arm64"),
            ({"nodePools": {"gpu-l4": {"disruption": {"consolidationPolicy": "WhenEmpty", "consolidateAfter": "1m", "budgets": {"b": {"nodes": "0", "schedule": "@daily"}}}}}}, "schedule and duration go together"),
            ({"nodePools": {"gpu-l4": {"capacityTypes": ["preemptible"]}}}, "capacityTypes"),
            ({"nodePools": {"gpu-l4": {"disruption": {"consolidationPolicy": "Always", "consolidateAfter": "1m"}}}}, "consolidationPolicy"),
            ({"nodePools": {"GPU_L4": {"enabled": True, "type": "gpu"}}}, "GPU_L4"),
            ({"nodePools": {"gpu-l4": {"instanceFamily": ["g6"]}}}, "additional properties 'instanceFamily' not allowed"),
            ({"nodeClasses": {"gpu": {"amiFamily": "ubuntu"}}}, "amiFamily"),
        ],
    )
    def test_fails_with_a_message_naming_the_fix(self, values, message):
        with pytest.raises(render.HelmError) as error:
            render_objects(values)
        assert message in str(error.value)


class TestProfilesLandOnThesePools:
    """The shared placement keys, checked end to end: every values/ profile, rendered by the
    llm-serving chart, selects pools this chart deploys by default and tolerates their taints."""

    DEFAULT_POOLS = {name: pool for name, pool in nodepools(render.render_chart(CHART, values=BASE)).items()}

    @pytest.mark.parametrize("profile", render.profiles("llm-serving"), ids=lambda p: p.name)
    def test_profile(self, profile: Path):
        objects = render.render_chart("llm-serving", values_files=[profile], namespace="llm")
        (rayservice,) = render.by_kind(objects, "RayService")
        cluster = rayservice["spec"]["rayClusterConfig"]
        for template in [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster.get("workerGroupSpecs", [])]:
            pool_name = template["spec"].get("nodeSelector", {}).get(PLACEMENT_LABEL)
            if pool_name is None:  # CPU-only profiles schedule anywhere (kind, laptops)
                continue
            assert pool_name in self.DEFAULT_POOLS, f"{profile.name} selects pool {pool_name!r}, not enabled by default"
            for taint in self.DEFAULT_POOLS[pool_name]["spec"]["template"]["spec"].get("taints", []):
                tolerated = any(
                    t.get("key") == taint["key"] and t.get("effect") == taint["effect"]
                    and (t.get("operator") == "Exists" or t.get("value") == taint["value"])
                    for t in template["spec"].get("tolerations", [])
                )
                assert tolerated, f"{profile.name}: pods on {pool_name} do not tolerate {taint}"
