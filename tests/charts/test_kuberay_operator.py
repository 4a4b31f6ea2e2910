"""charts/kuberay-operator: the operator, its RBAC and monitoring, and the CRD hook Job.

Every render goes through render.render_chart (real helm, every object schema-validated).
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any, Dict, List

import pytest
import yaml

from tests.charts import render
from tests.charts.values_docs import assert_same_keys, undocumented_keys

CHART = "kuberay-operator"
CHART_DIR = render.CHARTS / CHART
NAMESPACE = "kuberay-system"
CRD_NAMES = ["rayclusters.ray.io", "rayjobs.ray.io", "rayservices.ray.io", "raycronjobs.ray.io"]
UPSTREAM = "https://raw.githubusercontent.com/ray-project/kuberay"
HOOK_KINDS = {"Job", "ServiceAccount", "ClusterRole", "ClusterRoleBinding"}
PLURALS = ["rayclusters", "rayjobs", "rayservices", "raycronjobs"]
BUNDLED = CHART_DIR / "files" / "crds"
SOURCES = json.loads((BUNDLED / "SOURCES.json").read_text())
# A git checkout carries the provenance of the bundled CRDs (files/crds/SOURCES.json) but not the .gz
# files, which hack/vendor-crds.py writes before packaging. Tests of anything but the CRD source
# render with the online source, unless their values say otherwise; TestCrdBundled renders copies
# of the chart with CRD files of their own.
ONLINE = {"crds": {"source": "url"}}


def merged(base: Dict[str, Any], override: Dict[str, Any]) -> Dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def render_objects(values: Dict[str, Any] | None = None, online: bool = True, **kwargs: Any) -> List[Dict[str, Any]]:
    kwargs.setdefault("namespace", NAMESPACE)
    kwargs.setdefault("release", "kuberay-operator")
    if online:
        values = merged(ONLINE, values or {})
    return render.render_chart(CHART, values=values, **kwargs)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def chart_with_crds(tmp_path: Path, files: Dict[str, bytes] | None = None) -> Path:
    """A copy of the chart whose files/crds/ holds the given .gz files (default: a small CRD per
    plural), with SOURCES.json pinning their gzip_sha256 as hack/vendor-crds.py would."""
    copy = tmp_path / CHART
    shutil.copytree(CHART_DIR, copy, ignore=shutil.ignore_patterns("*.gz"))
    if files is None:
        files = {
            f"ray.io_{p}.yaml.gz": gzip.compress(f"apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata:\n  name: {p}.ray.io\n".encode(), mtime=0)
            for p in PLURALS
        }
    sources = json.loads(json.dumps(SOURCES))
    for entry in sources["files"]:
        if entry["file"] in files:
            (copy / "files" / "crds" / entry["file"]).write_bytes(files[entry["file"]])
            entry["gzip_sha256"] = sha256(files[entry["file"]])
    (copy / "files" / "crds" / "SOURCES.json").write_text(json.dumps(sources, indent=2))
    return copy


def render_bundled(tmp_path: Path, values: Dict[str, Any] | None = None, **kwargs: Any) -> List[Dict[str, Any]]:
    return render_objects(values, online=False, chart_dir=chart_with_crds(tmp_path, kwargs.pop("files", None)), **kwargs)


def hook_objects(objects: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    return [o for o in objects if "helm.sh/hook" in o["metadata"].get("annotations", {})]


def crd_job(objects: List[Dict[str, Any]]) -> Dict[str, Any]:
    return render.one(objects, "Job")


def pod_containers(job: Dict[str, Any]) -> List[Dict[str, Any]]:
    spec = job["spec"]["template"]["spec"]
    return spec.get("initContainers", []) + spec["containers"]


def operator_container(objects: List[Dict[str, Any]]) -> Dict[str, Any]:
    deployment = render.one(objects, "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def flag(args: List[str], name: str) -> str:
    values = [a.split("=", 1)[1] for a in args if a.startswith(f"--{name}=")]
    assert len(values) == 1, f"--{name} appears {len(values)} times in {args}"
    return values[0]


class TestChartMetadata:
    def test_chart_yaml(self):
        chart = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())
        assert chart["apiVersion"] == "v2"
        assert chart["name"] == CHART
        assert chart["appVersion"] == "v1.7.0"
        for key in ("version", "description", "type", "home", "sources", "maintainers", "keywords", "kubeVersion"):
            assert chart.get(key), f"Chart.yaml lacks {key}"

    def test_no_crds_directory(self):
        # Helm would install crds/ once and never upgrade it: the hook Job owns the CRDs instead.
        assert not (CHART_DIR / "crds").exists()


class TestValuesDocumentedAndInStep:
    """Every key has a `# --` comment and the schema describes exactly the keys values.yaml has."""

    def test_every_key_has_a_helm_docs_comment(self):
        schema = json.loads((CHART_DIR / "values.schema.json").read_text())
        missing = undocumented_keys((CHART_DIR / "values.yaml").read_text(), schema)
        assert not missing, f"keys without a '# --' comment: {missing}"

    def test_schema_and_values_have_the_same_keys(self):
        schema = json.loads((CHART_DIR / "values.schema.json").read_text())
        values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
        assert_same_keys(values, schema, schema, "")


class TestCiScenarios:
    @pytest.mark.parametrize("values_file", sorted((CHART_DIR / "ci").glob("*-values.yaml")), ids=lambda p: p.name)
    def test_renders_validates_and_lints(self, values_file: Path):
        objects = render_objects(values_files=[values_file], online=False)
        assert render.by_kind(objects, "Deployment")
        render.helm("lint", "--strict", str(CHART_DIR), "-f", str(values_file), "--namespace", NAMESPACE)


class TestDeployment:
    def test_official_image_pinned_to_app_version(self):
        container = operator_container(render_objects())
        assert container["image"] == "quay.io/kuberay/operator:v1.7.0"
        assert container["command"] == ["/manager"]

    def test_digest_pins_the_image(self):
        digest = "sha256:" + "a" * 64
        container = operator_container(render_objects({"image": {"digest": digest}}))
        assert container["image"] == f"quay.io/kuberay/operator:v1.7.0@{digest}"

    def test_leader_election_and_replicas(self):
        objects = render_objects()
        deployment = render.one(objects, "Deployment")
        assert deployment["spec"]["replicas"] == 2
        args = operator_container(objects)["args"]
        assert flag(args, "enable-leader-election") == "true"
        lease_role = [r for r in render.by_kind(objects, "Role") if r["metadata"]["name"].endswith("-leader-election")]
        assert len(lease_role) == 1
        lease_rule = [rule for rule in lease_role[0]["rules"] if rule["apiGroups"] == ["coordination.k8s.io"]]
        assert lease_rule and "leases" in lease_rule[0]["resources"]

    def test_flags(self):
        args = operator_container(render_objects({"watchNamespaces": ["a", "b"], "reconcileConcurrency": 4}))["args"]
        assert flag(args, "watch-namespace") == "a,b"
        assert flag(args, "reconcile-concurrency") == "4"
        assert flag(args, "metrics-addr") == ":8080"
        assert flag(args, "enable-metrics") == "true"
        assert flag(args, "health-probe-bind-address") == ":8082"
        assert flag(args, "qps") == "100" and flag(args, "burst") == "200"

    def test_all_namespaces_by_default(self):
        args = operator_container(render_objects())["args"]
        assert not [a for a in args if a.startswith("--watch-namespace")]

    def test_probes_use_the_health_port_not_metrics(self):
        container = operator_container(render_objects())
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports == {"http-metrics": 8080, "health": 8082}
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}

    def test_metrics_disabled_drops_port_service_and_monitor(self):
        objects = render_objects({"metrics": {"enabled": False}}, api_versions=["monitoring.coreos.com/v1"])
        container = operator_container(objects)
        assert flag(container["args"], "metrics-addr") == "0"
        assert [p["name"] for p in container["ports"]] == ["health"]
        assert not render.by_kind(objects, "Service") and not render.by_kind(objects, "ServiceMonitor")

    def test_secure_context(self):
        objects = render_objects()
        pod = render.one(objects, "Deployment")["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        context = operator_container(objects)["securityContext"]
        assert context["allowPrivilegeEscalation"] is False
        assert context["readOnlyRootFilesystem"] is True
        assert context["capabilities"]["drop"] == ["ALL"]
        assert context["seccompProfile"]["type"] == "RuntimeDefault"

    def test_resources(self):
        resources = operator_container(render_objects())["resources"]
        assert resources["requests"]["cpu"] and resources["limits"]["memory"]

    def test_selector_is_an_immutable_subset_without_user_labels(self):
        objects = render_objects({"podLabels": {"team": "ml"}, "commonLabels": {"cost-center": "42"}})
        deployment = render.one(objects, "Deployment")
        selector = deployment["spec"]["selector"]["matchLabels"]
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert selector == {
            "app.kubernetes.io/name": CHART,
            "app.kubernetes.io/instance": "kuberay-operator",
            "app.kubernetes.io/component": "operator",
        }
        assert selector.items() <= pod_labels.items()
        assert pod_labels["team"] == "ml" and deployment["metadata"]["labels"]["cost-center"] == "42"

    def test_fullname_truncated_to_63(self):
        release = "r" * 70
        objects = render_objects(release=release[:53])
        for obj in objects:
            assert len(obj["metadata"]["name"]) <= 63 and not obj["metadata"]["name"].endswith("-")

    def test_fullname_override(self):
        deployment = render.one(render_objects({"fullnameOverride": "ray-op"}), "Deployment")
        assert deployment["metadata"]["name"] == "ray-op"


class TestFeatureGates:
    def test_map_rendered_sorted(self):
        args = operator_container(render_objects())["args"]
        gates = dict(item.split("=") for item in flag(args, "feature-gates").split(","))
        assert list(gates) == sorted(gates)
        assert gates["RayServiceIncrementalUpgrade"] == "true"
        assert gates["RayCronJob"] == "false"
        assert len(gates) == 11

    def test_one_gate_overridden(self):
        args = operator_container(render_objects({"featureGates": {"RayCronJob": True}}))["args"]
        assert "RayCronJob=true" in flag(args, "feature-gates").split(",")
        assert "RayClusterStatusConditions=true" in flag(args, "feature-gates").split(",")

    def test_unknown_gate_is_rejected(self):
        with pytest.raises(render.HelmError, match=r"featureGates.*additional properties 'RayCronjob' not allowed"):
            render_objects({"featureGates": {"RayCronjob": True}})


def is_user_role(role: Dict[str, Any]) -> bool:
    return role["metadata"]["name"].endswith(("-editor", "-viewer"))


class TestRbac:
    def test_cluster_scope(self):
        objects = render_objects()
        roles = [r for r in render.by_kind(objects, "ClusterRole") if not hook_objects([r]) and not is_user_role(r)]
        assert len(roles) == 1
        rules = roles[0]["rules"]
        ray = [r for r in rules if r["apiGroups"] == ["ray.io"] and "rayservices" in r["resources"]]
        assert ray and "watch" in ray[0]["verbs"]
        binding = [b for b in render.by_kind(objects, "ClusterRoleBinding") if not hook_objects([b])][0]
        assert binding["roleRef"]["name"] == roles[0]["metadata"]["name"]
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": "kuberay-operator", "namespace": NAMESPACE}
        ]
        # Only the leader-election Role is namespaced.
        assert [r["metadata"]["name"] for r in render.by_kind(objects, "Role")] == ["kuberay-operator-leader-election"]

    def test_namespaced_scope_grants_only_in_watched_namespaces(self):
        objects = render_objects({"watchNamespaces": ["team-a", "team-b"], "rbac": {"scope": "namespaces"}})
        operator_roles = [r for r in render.by_kind(objects, "Role") if not r["metadata"]["name"].endswith("leader-election")]
        assert sorted(r["metadata"]["namespace"] for r in operator_roles) == ["team-a", "team-b"]
        bindings = [b for b in render.by_kind(objects, "RoleBinding") if not b["metadata"]["name"].endswith("leader-election")]
        assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
        for binding in bindings:
            assert binding["subjects"][0]["namespace"] == NAMESPACE
        # Nothing cluster-wide is left but the CRD hook's own ClusterRole.
        assert all(hook_objects([r]) for r in render.by_kind(objects, "ClusterRole"))
        assert all(hook_objects([b]) for b in render.by_kind(objects, "ClusterRoleBinding"))
        assert flag(operator_container(objects)["args"], "watch-namespace") == "team-a,team-b"

    @pytest.mark.parametrize(
        "values, group",
        [
            ({"batchScheduler": "volcano"}, "scheduling.volcano.sh"),
            ({"batchScheduler": "scheduler-plugins"}, "scheduling.x-k8s.io"),
            ({"featureGates": {"KubernetesWAS": True}}, "scheduling.k8s.io"),
        ],
    )
    def test_conditional_rules(self, values, group):
        groups = lambda objs: {g for r in render.by_kind(objs, "ClusterRole") for rule in r["rules"] for g in rule["apiGroups"]}
        assert group in groups(render_objects(values))
        assert group not in groups(render_objects())

    def test_rbac_create_false(self):
        objects = render_objects({"rbac": {"create": False}})
        assert all(hook_objects([o]) for o in objects if o["kind"] in {"ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"})
        assert not render.by_kind(objects, "Role")


class TestCrdHookWhen:
    """What runs, and when: hook phases, weights and delete policies."""

    def test_hook_objects_and_phases(self):
        hooks = hook_objects(render_objects())
        assert {o["kind"] for o in hooks} == HOOK_KINDS
        for obj in hooks:
            annotations = obj["metadata"]["annotations"]
            assert annotations["helm.sh/hook"] == "pre-install,pre-upgrade"
            assert annotations["helm.sh/hook-delete-policy"] == "before-hook-creation,hook-succeeded"

    def test_rbac_is_created_before_the_job(self):
        weights = {o["kind"]: int(o["metadata"]["annotations"]["helm.sh/hook-weight"]) for o in hook_objects(render_objects())}
        assert weights["ServiceAccount"] < weights["ClusterRoleBinding"] < weights["Job"]
        assert weights["ClusterRole"] < weights["ClusterRoleBinding"]

    def test_nothing_else_is_a_hook(self):
        objects = render_objects()
        assert {o["kind"] for o in objects if o not in hook_objects(objects)} >= {"Deployment", "ClusterRole"}
        assert render.one(objects, "Deployment")["metadata"].get("annotations") is None

    def test_job_runs_as_the_hook_service_account(self):
        objects = render_objects()
        job = crd_job(objects)
        account = [o for o in hook_objects(objects) if o["kind"] == "ServiceAccount"][0]
        assert job["spec"]["template"]["spec"]["serviceAccountName"] == account["metadata"]["name"]
        binding = [o for o in hook_objects(objects) if o["kind"] == "ClusterRoleBinding"][0]
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": NAMESPACE}]

    def test_job_fails_the_release_in_bounded_time(self):
        spec = crd_job(render_objects({"crds": {"timeoutSeconds": 120, "backoffLimit": 1}}))["spec"]
        assert spec["activeDeadlineSeconds"] == 120 and spec["backoffLimit"] == 1
        assert spec["template"]["spec"]["restartPolicy"] == "Never"


class TestCrdHookWhat:
    """Which commands run, in which order, with which version and URLs."""

    def test_steps_in_order(self):
        names = [c["name"] for c in pod_containers(crd_job(render_objects()))]
        assert names == ["apply", "wait-established", "check-storage-version", "check-served-version"]

    def test_server_side_apply_of_the_pinned_release(self):
        apply = pod_containers(crd_job(render_objects()))[0]
        assert apply["image"] == "registry.k8s.io/kubectl:v1.34.5"
        assert apply["args"][:4] == ["apply", "--server-side", "--force-conflicts", "--field-manager=kuberay-operator-chart"]
        urls = [a.split("=", 1)[1] for a in apply["args"] if a.startswith("--filename=")]
        assert urls == [f"{UPSTREAM}/v1.7.0/ray-operator/config/crd/bases/ray.io_{p}.yaml" for p in ("rayclusters", "rayjobs", "rayservices", "raycronjobs")]

    def test_operator_tag_drives_image_and_crds_together(self):
        objects = render_objects({"image": {"tag": "v1.6.1"}})
        assert operator_container(objects)["image"] == "quay.io/kuberay/operator:v1.6.1"
        urls = [a for a in pod_containers(crd_job(objects))[0]["args"] if a.startswith("--filename=")]
        assert urls and all("/v1.6.1/ray-operator/config/crd/bases/" in u for u in urls)
        assert render.one(objects, "Deployment")["metadata"]["labels"]["app.kubernetes.io/version"] == "v1.6.1"

    def test_waits_for_established_then_checks_versions(self):
        containers = {c["name"]: c["args"] for c in pod_containers(crd_job(render_objects()))}
        targets = [f"customresourcedefinitions.apiextensions.k8s.io/{n}" for n in CRD_NAMES]
        assert containers["wait-established"] == ["wait", "--for=condition=Established", "--timeout=60s", *targets]
        assert containers["check-storage-version"][1] == "--for=jsonpath={.spec.versions[?(@.storage==true)].name}=v1"
        assert containers["check-served-version"][1] == '--for=jsonpath={.spec.versions[?(@.name=="v1")].served}=true'
        for name in ("check-storage-version", "check-served-version"):
            assert containers[name][3:] == targets

    def test_hook_rbac_is_limited_to_the_ray_crds(self):
        role = [o for o in hook_objects(render_objects()) if o["kind"] == "ClusterRole"][0]
        assert role["rules"] == [
            {
                "apiGroups": ["apiextensions.k8s.io"],
                "resources": ["customresourcedefinitions"],
                "resourceNames": CRD_NAMES,
                "verbs": ["create", "get", "list", "patch", "watch"],
            }
        ]

    def test_containers_are_locked_down(self):
        job = crd_job(render_objects({"crds": {"source": "configMap", "configMaps": ["crds"]}}))
        pod = job["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        for container in pod_containers(job):
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True and context["allowPrivilegeEscalation"] is False
            assert context["capabilities"]["drop"] == ["ALL"]
            assert {"name": "HOME", "value": "/tmp"} in container["env"]
            assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]


class TestCrdHookModes:
    def test_mirror_base_url(self):
        objects = render_objects({"crds": {"baseUrl": "https://mirror.example/kuberay/"}})
        urls = [a.split("=", 1)[1] for a in pod_containers(crd_job(objects))[0]["args"] if a.startswith("--filename=")]
        assert urls[0] == "https://mirror.example/kuberay/v1.7.0/ray-operator/config/crd/bases/ray.io_rayclusters.yaml"
        assert not [u for u in urls if "githubusercontent" in u]

    def test_config_map_source(self):
        job = crd_job(render_objects({"crds": {"source": "configMap", "configMaps": ["kuberay-crds-a", "kuberay-crds-b"]}}))
        containers = pod_containers(job)
        assert [c["name"] for c in containers] == ["unpack", "apply", "wait-established", "check-storage-version", "check-served-version"]
        unpack, apply = containers[0], containers[1]
        assert unpack["image"] == "docker.io/library/busybox:1.37.0"
        assert "gunzip -c" in unpack["command"][-1]
        assert [a for a in apply["args"] if a.startswith("--filename")] == ["--filename=/crds"]
        assert not [a for c in containers for a in c.get("args", []) if "https://" in a]
        volumes = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
        assert [s["configMap"]["name"] for s in volumes["crd-source"]["projected"]["sources"]] == ["kuberay-crds-a", "kuberay-crds-b"]
        assert {"name": "crd-source", "mountPath": "/crd-source", "readOnly": True} in unpack["volumeMounts"]
        assert {"name": "crds", "mountPath": "/crds"} in apply["volumeMounts"]

    def test_config_map_source_allows_any_image_tag(self):
        values = {"image": {"tag": "v1.7.0-patched.1-internal"}, "crds": {"source": "configMap", "configMaps": ["c"]}}
        assert operator_container(render_objects(values))["image"].endswith(":v1.7.0-patched.1-internal")

    def test_left_to_someone_else(self):
        objects = render_objects({"crds": {"managed": False}})
        assert not hook_objects(objects)
        assert not render.by_kind(objects, "Job")
        assert render.by_kind(objects, "Deployment")


class TestCrdBundled:
    """The default CRD source needs no egress: the chart ships the CRDs (issue 13, item 9)."""

    def test_default_source_is_bundled(self):
        values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
        assert values["crds"]["source"] == "bundled"

    def test_default_renders_one_hook_config_map_per_crd_and_no_url(self, tmp_path):
        files = {f"ray.io_{p}.yaml.gz": gzip.compress(f"kind: CustomResourceDefinition # {p}\n".encode()) for p in PLURALS}
        objects = render_bundled(tmp_path, files=files)
        maps = {m["metadata"]["name"]: m for m in render.by_kind(objects, "ConfigMap")}
        assert list(maps) == [f"kuberay-operator-crds-{p}" for p in PLURALS]
        weights = {o["kind"]: int(o["metadata"]["annotations"]["helm.sh/hook-weight"]) for o in hook_objects(objects)}
        for plural, config_map in zip(PLURALS, maps.values()):
            assert hook_objects([config_map]) and weights["ConfigMap"] < weights["Job"]
            assert "data" not in config_map
            (key, payload), = config_map["binaryData"].items()
            assert key == f"ray.io_{plural}.yaml.gz"
            assert base64.b64decode(payload) == files[key]
        job = crd_job(objects)
        containers = pod_containers(job)
        assert [c["name"] for c in containers] == ["unpack", "apply", "wait-established", "check-storage-version", "check-served-version"]
        assert [a for a in containers[1]["args"] if a.startswith("--filename")] == ["--filename=/crds"]
        assert not [a for c in containers for a in c.get("args", []) + c.get("command", []) if "://" in a]
        volumes = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
        assert [s["configMap"]["name"] for s in volumes["crd-source"]["projected"]["sources"]] == list(maps)

    def test_a_chart_without_the_files_fails_naming_the_options(self, tmp_path):
        copy = tmp_path / CHART
        shutil.copytree(CHART_DIR, copy, ignore=shutil.ignore_patterns("*.gz"))
        with pytest.raises(render.HelmError) as error:
            render_objects(online=False, chart_dir=copy)
        message = str(error.value)
        assert "lacks files/crds/ray.io_rayclusters.yaml.gz" in message
        for option in ("hack/vendor-crds.py", "crds.source=configMap with crds.configMaps", "crds.source=url"):
            assert option in message

    def test_a_file_that_is_not_the_pinned_one_fails(self, tmp_path):
        copy = chart_with_crds(tmp_path)
        (copy / "files" / "crds" / "ray.io_rayjobs.yaml.gz").write_bytes(gzip.compress(b"tampered"))
        with pytest.raises(render.HelmError, match=r"files/crds/ray.io_rayjobs.yaml.gz has sha256 .* Re-vendor it"):
            render_objects(online=False, chart_dir=copy)

    def test_bundled_crds_are_those_of_the_operators_release(self, tmp_path):
        with pytest.raises(render.HelmError, match=r"applies the CRDs of KubeRay v1.7.0 .* but the operator runs v1.6.1"):
            render_bundled(tmp_path, {"image": {"tag": "v1.6.1"}})

    def test_online_is_an_explicit_choice(self, tmp_path):
        objects = render_bundled(tmp_path, {"crds": {"source": "url"}})
        assert not render.by_kind(objects, "ConfigMap")
        assert [a for a in pod_containers(crd_job(objects))[0]["args"] if a.startswith("--filename=https://")]


class TestCrdProvenance:
    """files/crds/SOURCES.json pins every bundled CRD to its upstream file; vendored files match it."""

    def test_every_crd_is_pinned_to_the_upstream_release(self):
        chart = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())
        assert SOURCES["repo"] == "ray-project/kuberay" and SOURCES["tag"] == chart["appVersion"]
        assert len(SOURCES["commit"]) == 40
        assert [e["plural"] for e in SOURCES["files"]] == PLURALS
        for entry in SOURCES["files"]:
            assert entry["file"] == f"ray.io_{entry['plural']}.yaml.gz"
            assert entry["path"] == f"ray-operator/config/crd/bases/ray.io_{entry['plural']}.yaml"
            assert entry["url"] == f"{UPSTREAM}/{SOURCES['tag']}/{entry['path']}"
            for key in ("upstream_sha256", "gzip_sha256"):
                assert len(entry[key]) == 64 and int(entry[key], 16) >= 0, key

    def test_the_rayservice_crd_is_the_one_the_chart_tests_validate_against(self):
        upstream = json.loads((render.REPO / "tests" / "schemas" / "upstream" / "SOURCES.json").read_text())
        (schema,) = [f for f in upstream["files"] if f["file"] == "ray.io/rayservice_v1.json"]
        (bundled,) = [e for e in SOURCES["files"] if e["plural"] == "rayservices"]
        assert (schema["tag"], schema["commit"], schema["path"]) == (SOURCES["tag"], SOURCES["commit"], bundled["path"])
        assert schema["upstream_sha256"] == bundled["upstream_sha256"]

    def test_vendored_files_match_their_sha256(self):
        present = [e for e in SOURCES["files"] if (BUNDLED / e["file"]).exists()]
        if not present:
            pytest.skip("files/crds/*.gz are not vendored in this checkout (hack/vendor-crds.py writes them)")
        for entry in present:
            data = (BUNDLED / entry["file"]).read_bytes()
            assert sha256(data) == entry["gzip_sha256"], entry["file"]
            assert sha256(gzip.decompress(data)) == entry["upstream_sha256"], entry["file"]
            # binaryData is base64: a ConfigMap holds at most 1 MiB.
            assert len(base64.b64encode(data)) < 1024 * 1024 // 2, entry["file"]


class TestUserRoles:
    """Editor and viewer ClusterRoles per Ray kind, aggregated into admin/edit/view (issue 13, item 9)."""

    def user_roles(self, values: Dict[str, Any] | None = None) -> Dict[str, Dict[str, Any]]:
        return {r["metadata"]["name"]: r for r in render.by_kind(render_objects(values), "ClusterRole") if is_user_role(r)}

    def test_editor_and_viewer_per_kind(self):
        roles = self.user_roles()
        prefix = f"{NAMESPACE}-kuberay-operator"
        kinds = ["raycluster", "rayjob", "rayservice", "raycronjob"]
        assert sorted(roles) == sorted(f"{prefix}-{k}-{r}" for k in kinds for r in ("editor", "viewer"))
        for kind in kinds:
            editor, viewer = roles[f"{prefix}-{kind}-editor"], roles[f"{prefix}-{kind}-viewer"]
            assert editor["rules"] == [
                {"apiGroups": ["ray.io"], "resources": [f"{kind}s"], "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"]},
                {"apiGroups": ["ray.io"], "resources": [f"{kind}s/status"], "verbs": ["get"]},
            ]
            assert viewer["rules"] == [
                {"apiGroups": ["ray.io"], "resources": [f"{kind}s"], "verbs": ["get", "list", "watch"]},
                {"apiGroups": ["ray.io"], "resources": [f"{kind}s/status"], "verbs": ["get"]},
            ]
            aggregate = lambda role: {k for k, v in role["metadata"]["labels"].items() if k.startswith("rbac.authorization.k8s.io/aggregate-to-") and v == "true"}
            assert aggregate(editor) == {"rbac.authorization.k8s.io/aggregate-to-admin", "rbac.authorization.k8s.io/aggregate-to-edit"}
            assert aggregate(viewer) == {"rbac.authorization.k8s.io/aggregate-to-view"}

    def test_not_aggregated(self):
        for role in self.user_roles({"rbac": {"userRoles": {"aggregate": False}}}).values():
            assert not [k for k in role["metadata"]["labels"] if k.startswith("rbac.authorization.k8s.io/aggregate-to-")]

    @pytest.mark.parametrize(
        "values",
        [
            {"rbac": {"userRoles": {"create": False}}},
            {"rbac": {"create": False}},
            {"rbac": {"scope": "namespaces"}, "watchNamespaces": ["a"]},
        ],
    )
    def test_off(self, values):
        assert not self.user_roles(values)


class TestCrdHookCommandsParse:
    """The Job's kubectl arguments are accepted by kubectl itself (the image's version), if installed."""

    KUBECTL = shutil.which("kubectl", path=str(render.REPO / ".tools" / "bin")) or shutil.which("kubectl")

    @pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed (.tools/bin or PATH)")
    @pytest.mark.parametrize("step", ["wait-established", "check-storage-version", "check-served-version"])
    def test_kubectl_accepts_the_arguments(self, step, tmp_path):
        (container,) = [c for c in pod_containers(crd_job(render_objects())) if c["name"] == step]
        result = subprocess.run(
            [self.KUBECTL, *container["args"], "--server=http://127.0.0.1:1", "--request-timeout=2s"],
            capture_output=True, text=True, env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}, timeout=60,
        )
        # It gets as far as contacting the (absent) API server: the arguments parsed.
        assert result.returncode != 0
        assert "connection refused" in result.stderr, result.stderr


class TestServiceMonitor:
    def test_absent_when_the_api_is_not_served(self):
        assert not render.by_kind(render_objects(), "ServiceMonitor")

    @pytest.mark.parametrize("how", ["cluster", "values"])
    def test_present_when_the_api_is_served_or_assumed(self, how):
        if how == "cluster":
            objects = render_objects(api_versions=["monitoring.coreos.com/v1"])
        else:
            objects = render_objects({"assumeApiVersions": ["monitoring.coreos.com/v1"]})
        monitor = render.one(objects, "ServiceMonitor")
        service = render.one(objects, "Service")
        assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
        assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"] == "http-metrics"
        assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
        assert service["spec"]["selector"] == render.one(objects, "Deployment")["spec"]["selector"]["matchLabels"]

    def test_release_label_for_the_prometheus_operator(self):
        values = {"assumeApiVersions": ["monitoring.coreos.com/v1"], "metrics": {"serviceMonitor": {"labels": {"release": "kps"}}}}
        assert render.one(render_objects(values), "ServiceMonitor")["metadata"]["labels"]["release"] == "kps"

    def test_disabled(self):
        values = {"assumeApiVersions": ["monitoring.coreos.com/v1"], "metrics": {"serviceMonitor": {"enabled": False}}}
        assert not render.by_kind(render_objects(values), "ServiceMonitor")


class TestPodDisruptionBudget:
    def test_keeps_the_standby(self):
        objects = render_objects()
        pdb = render.one(objects, "PodDisruptionBudget")
        assert pdb["spec"]["maxUnavailable"] == 1
        assert pdb["spec"]["selector"]["matchLabels"] == render.one(objects, "Deployment")["spec"]["selector"]["matchLabels"]

    def test_disabled(self):
        assert not render.by_kind(render_objects({"podDisruptionBudget": {"enabled": False}}), "PodDisruptionBudget")


class TestBadValues:
    @pytest.mark.parametrize(
        "values, message",
        [
            ({"rbac": {"scope": "namespaces"}}, "List the namespaces in watchNamespaces, or set rbac.scope=cluster"),
            ({"replicas": 3, "leaderElection": {"enabled": False}}, "Set leaderElection.enabled=true, or replicas=1"),
            ({"featureGates": {"KubernetesWAS": True}, "batchScheduler": "volcano"}, "cannot be combined with batchScheduler=volcano"),
            ({"featureGates": {"SidecarSubmitterRestart": True}}, "needs Kubernetes >= 1.35"),
            ({"crds": {"source": "configMap"}}, "Set crds.configMaps"),
            ({"image": {"tag": "latest"}}, 'image.tag="latest" is not a KubeRay release tag'),
            ({"commonLabels": {"app.kubernetes.io/name": "x"}}, 'may not set "app.kubernetes.io/name"'),
            ({"crds": {"sorce": "url"}}, "additional properties 'sorce' not allowed"),
            ({"crds": {"source": "git"}}, "crds/source"),
            ({"crds": {"baseUrl": "ftp://mirror"}}, "crds/baseUrl"),
            ({"rbac": {"scope": "namespace"}}, "rbac/scope"),
            ({"image": {"digest": "abc"}}, "image/digest"),
            ({"replicas": "2"}, "replicas"),
        ],
    )
    def test_fails_with_a_message_naming_the_fix(self, values, message):
        with pytest.raises(render.HelmError) as error:
            render_objects(values)
        assert message in str(error.value)
