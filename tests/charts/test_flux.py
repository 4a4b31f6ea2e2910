"""deploy/flux: the Flux objects that install the stack, validated against the Flux schemas.

The YAML files are loaded directly (after the ${var} substitution Flux's postBuild performs) and each
object goes through render.validate_object: the Flux v2.x CRD schemas (strict) and Kubernetes' own.
Then the wiring is checked: every chartRef resolves, dependsOn is acyclic and orders the stack, the
inline values and the profile are accepted by the charts they are for.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, Dict, List

import pytest
import yaml

from tests.charts import render
from tests.cluster_fit.composition import checkout_overlay

FLUX = render.REPO / "deploy" / "flux"
KUSTOMIZATION = FLUX / "kustomization.yaml"
# Values for the variables the Flux Kustomization substitutes (postBuild.substitute), as a user sets them.
SUBSTITUTIONS = {"cluster_name": "llm-prod", "chart_registry": "ghcr.io/example/charts"}
KARPENTER_APIS = ["karpenter.sh/v1", "karpenter.k8s.aws/v1"]
# HelmReleases outside deploy/flux that releases wait for: kube-prometheus-stack, as README.md assumes
# it (a Flux HelmRelease in namespace monitoring), for the Prometheus Operator CRDs and the Prometheus
# that selects `release: kube-prometheus-stack`.
EXTERNAL_DEPENDENCIES = {("monitoring", "kube-prometheus-stack")}


def substitute(text: str) -> str:
    return re.sub(r"\$\{([a-z_]+)\}", lambda m: SUBSTITUTIONS[m.group(1)], text)


def manifest_files() -> List[Path]:
    return sorted(p for p in FLUX.rglob("*.yaml") if p != KUSTOMIZATION)


def load_objects() -> List[Dict[str, Any]]:
    objects = []
    for path in manifest_files():
        objects += [doc for doc in yaml.safe_load_all(substitute(path.read_text())) if doc]
    return objects


OBJECTS = load_objects()
RELEASES = {o["metadata"]["name"]: o for o in OBJECTS if o["kind"] == "HelmRelease"}
SOURCES = {(o["kind"], o["metadata"]["name"]): o for o in OBJECTS if o["apiVersion"].startswith("source.toolkit.fluxcd.io/")}


def kustomization() -> Dict[str, Any]:
    return yaml.safe_load(KUSTOMIZATION.read_text())


def chart_of(release: Dict[str, Any]) -> str:
    source = SOURCES[(release["spec"]["chartRef"]["kind"], release["spec"]["chartRef"]["name"])]
    return source["spec"]["url"].rsplit("/", 1)[1]


def profile_path() -> Path:
    (generator,) = [g for g in kustomization()["configMapGenerator"] if g["name"] == "llm-serving-values"]
    (entry,) = generator["files"]
    key, _, path = entry.partition("=")
    assert key == "values.yaml"
    return (FLUX / path).resolve()


class TestObjects:
    @pytest.mark.parametrize("obj", OBJECTS, ids=lambda o: f"{o['kind']}/{o['metadata']['name']}")
    def test_validates_against_its_schema(self, obj):
        render.validate_object(obj)

    def test_api_versions(self):
        kinds = {(o["apiVersion"], o["kind"]) for o in OBJECTS}
        assert kinds == {
            ("v1", "Namespace"),
            ("source.toolkit.fluxcd.io/v1", "OCIRepository"),
            ("helm.toolkit.fluxcd.io/v2", "HelmRelease"),
        }

    def test_the_stack(self):
        assert set(RELEASES) == {"kuberay-operator", "karpenter-nodepools", "llm-monitoring", "llm-serving"}

    def test_one_object_per_file(self):
        for path in manifest_files():
            assert len([d for d in yaml.safe_load_all(path.read_text()) if d]) == 1, path

    def test_schema_validation_can_fail(self):
        broken = yaml.safe_load(yaml.safe_dump(RELEASES["llm-serving"]))
        broken["spec"]["upgrade"]["remediation"]["retries"] = "3"
        with pytest.raises(AssertionError, match="retries"):
            render.validate_object(broken)


class TestKustomization:
    def test_lists_every_manifest(self):
        listed = {(FLUX / p).resolve() for p in kustomization()["resources"]}
        assert listed == {p.resolve() for p in manifest_files()}

    def test_substitution_variables_are_documented(self):
        readme = (FLUX / "README.md").read_text()
        used = {m for p in manifest_files() for m in re.findall(r"\$\{([a-z_]+)\}", p.read_text())}
        assert used == set(SUBSTITUTIONS)
        for name in used:
            assert f"`{name}`" in readme, f"README.md does not document ${{{name}}}"

    def test_profile_is_a_values_file_of_the_repository(self):
        path = profile_path()
        assert path.parent == render.VALUES and path.is_file()

    @pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (for its kustomize) is not installed")
    def test_kustomize_builds(self, tmp_path):
        result = subprocess.run(
            ["kubectl", "kustomize", "--load-restrictor", "LoadRestrictionsNone", str(FLUX)],
            capture_output=True, text=True, env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin:/usr/local/bin"}, timeout=120,
        )
        assert result.returncode == 0, result.stderr
        built = [d for d in yaml.safe_load_all(substitute(result.stdout)) if d]
        config_map = [d for d in built if d["kind"] == "ConfigMap"]
        assert [c["metadata"]["name"] for c in config_map] == ["llm-serving-values"]
        assert config_map[0]["metadata"]["namespace"] == "flux-system"
        assert yaml.safe_load(config_map[0]["data"]["values.yaml"]) == yaml.safe_load(profile_path().read_text())
        for obj in built:
            render.validate_object(obj)


class TestWiring:
    def test_chart_refs_resolve_in_the_same_namespace(self):
        for release in RELEASES.values():
            ref = release["spec"]["chartRef"]
            source = SOURCES[(ref["kind"], ref["name"])]
            assert source["metadata"]["namespace"] == release["metadata"]["namespace"]
            assert source["spec"]["layerSelector"]["mediaType"] == "application/vnd.cncf.helm.chart.content.v1.tar+gzip"

    @pytest.mark.parametrize("name", sorted(RELEASES))
    def test_source_semver_covers_the_chart_version(self, name):
        chart = chart_of(RELEASES[name])
        assert (render.CHARTS / chart).exists(), f"release {name} installs chart {chart}, which is not under charts/"
        version = yaml.safe_load((render.CHARTS / chart / "Chart.yaml").read_text())["version"]
        semver = SOURCES[("OCIRepository", name)]["spec"]["ref"]["semver"]
        match = re.fullmatch(r"(\d+)\.(\d+)\.x", semver)
        assert match, f"use a MAJOR.MINOR.x range, not {semver!r}"
        assert version.split(".")[:2] == [match.group(1), match.group(2)], f"{semver} does not cover {chart} {version}"

    def test_depends_on_resolves_and_is_acyclic(self):
        order: List[str] = []
        pending = dict(RELEASES)

        def met(dep: Dict[str, Any], release: Dict[str, Any]) -> bool:
            namespace = dep.get("namespace", release["metadata"]["namespace"])
            if (namespace, dep["name"]) in EXTERNAL_DEPENDENCIES:
                return True
            return namespace == release["metadata"]["namespace"] and dep["name"] in order

        while pending:
            ready = [n for n, r in pending.items() if all(met(d, r) for d in r["spec"].get("dependsOn", []))]
            assert ready, f"dependsOn cycle or unknown release among {sorted(pending)}"
            order += sorted(ready)
            for name in ready:
                del pending[name]
        assert order.index("llm-serving") == len(order) - 1

    def test_serving_waits_for_operator_node_pools_and_monitoring(self):
        depends = {d["name"] for d in RELEASES["llm-serving"]["spec"]["dependsOn"]}
        assert depends == {"kuberay-operator", "karpenter-nodepools", "llm-monitoring"}
        for entry in RELEASES["llm-serving"]["spec"]["dependsOn"]:
            # Same namespace as llm-serving, so no cross-namespace reference (allowed under lockdown).
            assert "namespace" not in entry
            assert RELEASES[entry["name"]]["metadata"]["namespace"] == RELEASES["llm-serving"]["metadata"]["namespace"]

    def test_external_dependencies_are_documented(self):
        readme = (FLUX / "README.md").read_text()
        for namespace, name in EXTERNAL_DEPENDENCIES:
            assert f"`{name}`" in readme and f"`{namespace}`" in readme
        used = {(d.get("namespace", r["metadata"]["namespace"]), d["name"])
                for r in RELEASES.values() for d in r["spec"].get("dependsOn", [])}
        assert EXTERNAL_DEPENDENCIES <= used

    @pytest.mark.parametrize("name", sorted(RELEASES))
    def test_crd_policies_and_remediation(self, name):
        spec = RELEASES[name]["spec"]
        # None of these charts ships crds/: the operator's hook Job owns the ray.io CRDs, and the
        # Karpenter and prometheus-operator CRDs belong to their own installations.
        assert spec["install"]["crds"] == "Skip" and spec["upgrade"]["crds"] == "Skip"
        if name == "llm-serving":
            # Retried as upgrades, never uninstalled: an uninstall deletes the RayService mid-download.
            assert spec["install"]["strategy"]["name"] == "RetryOnFailure"
            assert "remediation" not in spec["install"]
        else:
            assert spec["install"]["remediation"]["retries"] > 0
        assert spec["upgrade"]["remediation"]["strategy"] == "rollback"
        assert not spec["install"].get("disableHooks") and not spec["upgrade"].get("disableHooks")
        assert spec["storageNamespace"] == spec["targetNamespace"]

    def test_operator_timeout_covers_the_crd_job(self):
        spec = RELEASES["kuberay-operator"]["spec"]
        chart_values = yaml.safe_load((render.CHARTS / "kuberay-operator" / "values.yaml").read_text())
        crd_job_seconds = spec.get("values", {}).get("crds", {}).get("timeoutSeconds", chart_values["crds"]["timeoutSeconds"])
        assert duration_seconds(spec["timeout"]) > crd_job_seconds

    def test_serving_profile_comes_from_the_generated_config_map(self):
        spec = RELEASES["llm-serving"]["spec"]
        assert spec["valuesFrom"] == [{"kind": "ConfigMap", "name": "llm-serving-values", "valuesKey": "values.yaml"}]


def duration_seconds(text: str) -> int:
    units = {"s": 1, "m": 60, "h": 3600}
    return sum(int(n) * units[u] for n, u in re.findall(r"(\d+)([smh])", text))


class TestValuesAreAcceptedByTheCharts:
    """What helm-controller would render: the chart with the release's values (and profile)."""

    def test_kuberay_operator(self):
        values = {**RELEASES["kuberay-operator"]["spec"]["values"], **checkout_overlay("kuberay-operator")}
        objects = render.render_chart("kuberay-operator", values=values,
                                      namespace="kuberay-system", release="kuberay-operator",
                                      api_versions=["monitoring.coreos.com/v1"])
        assert render.one(objects, "ServiceMonitor")["metadata"]["labels"]["release"] == "kube-prometheus-stack"

    def test_llm_monitoring(self):
        """Selected by kube-prometheus-stack, rendered whatever Helm discovers, scraping the serving release."""
        spec = RELEASES["llm-monitoring"]["spec"]
        objects = render.render_chart("llm-monitoring", values=spec["values"], namespace=spec["targetNamespace"],
                                      release=spec["releaseName"])
        monitors = render.by_kind(objects, "PodMonitor") + render.by_kind(objects, "PrometheusRule")
        assert len(monitors) == 3
        assert all(m["metadata"]["labels"]["release"] == "kube-prometheus-stack" for m in monitors)
        serving = RELEASES["llm-serving"]["spec"]
        for monitor in render.by_kind(objects, "PodMonitor"):
            assert monitor["spec"]["namespaceSelector"] == {"matchNames": [serving["targetNamespace"]]}
            assert monitor["spec"]["selector"]["matchLabels"]["app.kubernetes.io/instance"] == serving["releaseName"]

    def test_karpenter_nodepools(self):
        objects = render.render_chart("karpenter-nodepools", values=RELEASES["karpenter-nodepools"]["spec"]["values"],
                                      namespace="karpenter", release="karpenter-nodepools", api_versions=KARPENTER_APIS)
        classes = render.by_kind(objects, "EC2NodeClass")
        assert classes and all(c["spec"]["role"] == "KarpenterNodeRole-llm-prod" for c in classes)

    @pytest.mark.parametrize("name", sorted(RELEASES))
    def test_every_release_renders(self, name):
        spec = RELEASES[name]["spec"]
        chart = chart_of(RELEASES[name])
        if not (render.CHARTS / chart).exists():
            pytest.skip(f"{chart} is not under charts/ yet")
        values_files = [profile_path()] if spec.get("valuesFrom") else []
        values = {**(spec.get("values") or {}), **checkout_overlay(chart)}
        objects = render.render_chart(chart, values_files=values_files, values=values or None,
                                      namespace=spec["targetNamespace"], release=spec["releaseName"],
                                      api_versions=["monitoring.coreos.com/v1", *KARPENTER_APIS])
        assert objects

    def test_llm_serving_with_its_profile_lands_on_the_deployed_node_pools(self):
        profile = profile_path()
        objects = render.render_chart("llm-serving", values_files=[profile], values=RELEASES["llm-serving"]["spec"].get("values"),
                                      namespace="llm-serving", release=RELEASES["llm-serving"]["spec"]["releaseName"])
        rayservice = render.one(objects, "RayService")
        pools = render.render_chart("karpenter-nodepools", values=RELEASES["karpenter-nodepools"]["spec"]["values"],
                                    namespace="karpenter", api_versions=KARPENTER_APIS)
        deployed = {p["metadata"]["name"] for p in render.by_kind(pools, "NodePool")}
        cluster = rayservice["spec"]["rayClusterConfig"]
        templates = [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster.get("workerGroupSpecs", [])]
        wanted = {t["spec"].get("nodeSelector", {}).get("llm-serving.io/node-pool") for t in templates} - {None}
        assert wanted and wanted <= deployed, f"the profile selects {wanted}, the node pools release deploys {deployed}"
