"""charts/llm-monitoring: PodMonitors, the PrometheusRule (promtool-checked and unit-tested), dashboards.

Every render goes through render.render_chart (real helm, every object schema-validated: PodMonitor and
PrometheusRule against the prometheus-operator v0.93 CRD schemas, ConfigMaps against Kubernetes').
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest
import yaml

from tests.charts import monitoring_metrics as mm
from tests.charts import render

sys.path.insert(0, str(render.REPO / "ci"))
from chart_values_docs import parse_values_docs  # noqa: E402

CHART = "llm-monitoring"
CHART_DIR = render.CHARTS / CHART
NAMESPACE = "monitoring"
RELEASE = "llm-monitoring"
API = "monitoring.coreos.com/v1"
PROMTOOL = render.REPO / ".tools" / "bin" / "promtool"
PROMTOOL_TESTS = render.REPO / "tests" / "promtool" / "llm-monitoring.test.yaml"
RULES_FILE_NAME = "llm-monitoring.rules.yaml"  # the name the promtool test file loads
RUNBOOKS = CHART_DIR / "runbooks.md"
DASHBOARD_UIDS = {
    "llm-overview.json": "llm-serving-overview",
    "llm-engine.json": "llm-serving-engine",
    "llm-capacity.json": "llm-serving-capacity",
}
ALERTS = [
    "LLMServingTimeToFirstTokenHigh", "LLMServingInterTokenLatencyHigh", "LLMServingServerErrorRatioHigh",
    "LLMServingClientErrorRatioHigh", "LLMServingNoSuccessfulResponses", "LLMServingEngineQueueHigh",
    "LLMServingKVCacheNearlyFull", "LLMServingDeploymentUnhealthy", "LLMServingReplicasBelowTarget",
    "LLMServingReplicasRestarting", "LLMServingGPUUtilizationHigh", "LLMServingGPUIdle",
    "LLMServingRayServiceNotReady", "LLMServingRayServiceInitializingTimeout",
]


def render_objects(values: Optional[Dict[str, Any]] = None, api: bool = True, **kwargs: Any) -> List[Dict[str, Any]]:
    kwargs.setdefault("namespace", NAMESPACE)
    kwargs.setdefault("release", RELEASE)
    if api:
        kwargs.setdefault("api_versions", [API])
    return render.render_chart(CHART, values=values, **kwargs)


def pod_monitor(objects: List[Dict[str, Any]], node_type: str) -> Dict[str, Any]:
    found = [o for o in render.by_kind(objects, "PodMonitor") if o["metadata"]["name"].endswith(f"-ray-{node_type}")]
    assert len(found) == 1, f"expected one {node_type} PodMonitor, found {len(found)}"
    return found[0]


def alert_rules(objects: List[Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
    rule = render.one(objects, "PrometheusRule")
    return {r["alert"]: r for group in rule["spec"]["groups"] for r in group["rules"] if "alert" in r}


def dashboard_maps(objects: List[Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
    """ConfigMaps by the dashboard file they carry."""
    return {next(iter(o["data"])): o for o in render.by_kind(objects, "ConfigMap")}


def run_promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    assert PROMTOOL.is_file(), f"{PROMTOOL} is missing: run ci/install-tools.sh"
    return subprocess.run([str(PROMTOOL), *args], cwd=cwd, capture_output=True, text=True)


def write_rules(groups: List[Dict[str, Any]], directory: Path) -> Path:
    """The rendered rule groups as a plain Prometheus rules file (what the operator hands Prometheus)."""
    path = directory / RULES_FILE_NAME
    path.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    return path


# ---------------------------------------------------------------------------------------------- chart

class TestChartMetadata:
    def test_chart_yaml(self):
        chart = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())
        assert chart["apiVersion"] == "v2"
        assert chart["name"] == CHART
        assert chart["type"] == "application"
        for key in ("version", "appVersion", "description", "home", "sources", "maintainers", "keywords", "kubeVersion"):
            assert chart.get(key), f"Chart.yaml lacks {key}"

    def test_one_resource_kind_per_template_file(self):
        for template in (CHART_DIR / "templates").glob("*.yaml"):
            kinds = set(re.findall(r"^kind: (\w+)", template.read_text(), re.M))
            assert len(kinds) <= 1, f"{template.name} renders several kinds: {kinds}"

    def test_helpers_are_namespaced_and_documented(self):
        text = (CHART_DIR / "templates" / "_helpers.tpl").read_text()
        names = re.findall(r'define "([^"]+)"', text)
        assert names
        for name in names:
            assert name.startswith("llm-monitoring."), name
            block = text[: text.index(f'define "{name}"')].rsplit("{{/*", 1)[-1]
            assert "Usage:" in block, f"helper {name} has no Usage: comment"


class TestValuesDocumentedAndInStep:
    def schema(self) -> Dict[str, Any]:
        return json.loads((CHART_DIR / "values.schema.json").read_text())

    def resolve(self, node: Dict[str, Any]) -> Dict[str, Any]:
        schema = self.schema()
        if "$ref" in node:
            return self.resolve(schema["$defs"][node["$ref"].rsplit("/", 1)[1]])
        if "allOf" in node:
            merged = dict(node)
            for part in node["allOf"]:
                merged = {**self.resolve(part), **merged}
            return merged
        return node

    def test_every_key_has_a_helm_docs_comment(self):
        """Keys inside free-form maps (label maps) are documented by their parent."""

        def child(node: Dict[str, Any], key: str) -> Dict[str, Any]:
            node = self.resolve(node)
            if key in node.get("properties", {}):
                return self.resolve(node["properties"][key])
            extra = node.get("additionalProperties")
            return self.resolve(extra) if isinstance(extra, dict) else {}

        missing = []
        for doc in parse_values_docs(CHART_DIR / "values.yaml"):
            parent = self.schema()
            for key in doc.path[:-1]:
                parent = child(parent, key)
            extra = parent.get("additionalProperties")
            free_form = "properties" not in parent and not (isinstance(extra, dict) and "properties" in self.resolve(extra))
            if doc.description is None and not free_form:
                missing.append(doc.dotted)
        assert not missing, f"keys without a '# --' comment: {missing}"

    def test_the_doc_check_notices_a_missing_comment(self, tmp_path):
        text = (CHART_DIR / "values.yaml").read_text().replace("  # -- Render the PrometheusRule.\n", "")
        (tmp_path / "values.yaml").write_text(text)
        docs = {d.dotted: d.description for d in parse_values_docs(tmp_path / "values.yaml")}
        assert docs["prometheusRule.enabled"] is None and docs["podMonitors.enabled"]

    def test_schema_and_values_have_the_same_keys(self):
        values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())

        def walk(value: Any, node: Dict[str, Any], path: str) -> None:
            node = self.resolve(node)
            if not isinstance(value, dict) or "properties" not in node:
                return
            assert set(value) == set(node["properties"]), f"{path or '<root>'}: values {sorted(value)} vs schema {sorted(node['properties'])}"
            assert node.get("additionalProperties") is False, f"{path or '<root>'} is not strict"
            for key, child in value.items():
                walk(child, node["properties"][key], f"{path}{key}.")

        walk(values, self.schema(), "")


class TestCiScenarios:
    @pytest.mark.parametrize("values_file", sorted((CHART_DIR / "ci").glob("*-values.yaml")), ids=lambda p: p.name)
    def test_renders_validates_and_lints(self, values_file: Path, tmp_path: Path):
        objects = render_objects(values_files=[values_file], api=False)
        assert objects, f"{values_file.name} renders nothing"
        render.helm("lint", "--strict", str(CHART_DIR), "-f", str(values_file), "--namespace", NAMESPACE)
        for rule in render.by_kind(objects, "PrometheusRule"):
            write_rules(rule["spec"]["groups"], tmp_path)
            result = run_promtool("check", "rules", RULES_FILE_NAME, cwd=tmp_path)
            assert result.returncode == 0, result.stdout + result.stderr


def test_no_scenario_selects_ray_pods_by_a_label_kuberay_leaves_off_pods():
    """KubeRay v1.7 (common/pod.go labelPod) puts ray.io/originated-from-cr-name and -crd on the
    RayCluster and the Services it creates, never on Ray pods: a PodMonitor selecting them scrapes
    nothing. Pods carry ray.io/cluster, ray.io/node-type, ray.io/group and the template's labels."""
    for path in sorted((CHART_DIR / "ci").glob("*.yaml")):
        labels = ((yaml.safe_load(path.read_text()) or {}).get("podMonitors") or {}).get("matchLabels") or {}
        assert not [k for k in labels if k.startswith("ray.io/originated-from-")], path.name


class TestCapabilitiesGate:
    def test_only_dashboards_without_the_prometheus_operator_api(self):
        objects = render_objects(api=False)
        assert {o["kind"] for o in objects} == {"ConfigMap"}

    @pytest.mark.parametrize("how", ["cluster", "values"])
    def test_monitors_and_rules_when_the_api_is_served_or_assumed(self, how):
        if how == "cluster":
            objects = render_objects(api_versions=[API])
        else:
            objects = render_objects({"assumeApiVersions": [API]}, api=False)
        assert len(render.by_kind(objects, "PodMonitor")) == 2
        assert len(render.by_kind(objects, "PrometheusRule")) == 1


# ----------------------------------------------------------------------------------------- monitors

class TestPodMonitors:
    @pytest.mark.parametrize("node_type", ["head", "worker"])
    def test_scrapes_the_ray_metrics_port_of_kuberay_pods(self, node_type):
        monitor = pod_monitor(render_objects(), node_type)
        assert monitor["metadata"]["name"] == f"{RELEASE}-ray-{node_type}"
        assert monitor["metadata"]["namespace"] == NAMESPACE
        assert monitor["spec"]["selector"] == {"matchLabels": {"ray.io/node-type": node_type}}
        assert monitor["spec"]["namespaceSelector"] == {"any": True}
        (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
        assert endpoint["port"] == "metrics"
        assert endpoint["path"] == "/metrics"
        assert (endpoint["interval"], endpoint["scrapeTimeout"]) == ("30s", "10s")
        assert endpoint["relabelings"] == [{
            "action": "replace", "sourceLabels": ["__meta_kubernetes_pod_label_ray_io_cluster"],
            "targetLabel": "ray_io_cluster",
        }]

    def test_the_llm_serving_chart_names_the_port_the_monitors_scrape(self):
        """The RayService's Ray containers (first in each pod, KubeRay's convention) declare `metrics`."""
        objects = render.render_chart("llm-serving", values_files=[render.VALUES / "dev-cpu.yaml"], namespace="llm")
        cluster = render.one(objects, "RayService")["spec"]["rayClusterConfig"]
        templates = [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster.get("workerGroupSpecs", [])]
        for template in templates:
            ports = {p["name"]: p["containerPort"] for p in template["spec"]["containers"][0].get("ports", [])}
            assert ports.get("metrics") == 8080, ports

    def test_release_label_for_kube_prometheus_stack(self):
        objects = render_objects({"prometheus": {"selectorLabels": {"release": "kps"}}})
        for obj in render.by_kind(objects, "PodMonitor") + render.by_kind(objects, "PrometheusRule"):
            assert obj["metadata"]["labels"]["release"] == "kps"
        for obj in render.by_kind(objects, "ConfigMap"):
            assert "release" not in obj["metadata"]["labels"]

    def test_match_names_wins_over_any(self):
        values = {"podMonitors": {"namespaceSelector": {"matchNames": ["llm", "llm-canary"]}}}
        monitor = pod_monitor(render_objects(values), "worker")
        assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["llm", "llm-canary"]}

    def test_release_namespace_only(self):
        monitor = pod_monitor(render_objects({"podMonitors": {"namespaceSelector": {"any": False}}}), "worker")
        assert "namespaceSelector" not in monitor["spec"]

    def test_one_cluster_and_extra_labels(self):
        values = {"podMonitors": {"rayCluster": "llm-raycluster-abcde",
                                  "matchLabels": {"app.kubernetes.io/instance": "llm"}}}
        monitor = pod_monitor(render_objects(values), "head")
        assert monitor["spec"]["selector"]["matchLabels"] == {
            "ray.io/node-type": "head", "ray.io/cluster": "llm-raycluster-abcde", "app.kubernetes.io/instance": "llm",
        }

    def test_extra_relabelings_follow_the_cluster_label_and_metric_relabelings_pass_through(self):
        extra = {"action": "replace", "sourceLabels": ["__meta_kubernetes_pod_label_ray_io_group"], "targetLabel": "ray_io_group"}
        drop = {"action": "drop", "sourceLabels": ["__name__"], "regex": "ray_serve_event_loop_.*"}
        values = {"podMonitors": {"relabelings": [extra], "metricRelabelings": [drop], "sampleLimit": 50000,
                                  "interval": "15s", "scrapeTimeout": "15s"}}
        monitor = pod_monitor(render_objects(values), "worker")
        (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
        assert [r["targetLabel"] for r in endpoint["relabelings"]] == ["ray_io_cluster", "ray_io_group"]
        assert endpoint["metricRelabelings"] == [drop]
        assert monitor["spec"]["sampleLimit"] == 50000
        assert (endpoint["interval"], endpoint["scrapeTimeout"]) == ("15s", "15s")

    @pytest.mark.parametrize("node_type", ["head", "worker"])
    def test_each_can_be_disabled(self, node_type):
        objects = render_objects({"podMonitors": {node_type: {"enabled": False}}})
        kept = {"head": "worker", "worker": "head"}[node_type]
        assert [o["metadata"]["name"] for o in render.by_kind(objects, "PodMonitor")] == [f"{RELEASE}-ray-{kept}"]

    def test_no_monitor_for_the_operator(self):
        """The kuberay-operator chart's ServiceMonitor scrapes the operator; a second one would double it."""
        objects = render_objects()
        assert not render.by_kind(objects, "ServiceMonitor")
        operator_monitor = (render.CHARTS / "kuberay-operator" / "templates" / "servicemonitor.yaml").read_text()
        assert "kind: ServiceMonitor" in operator_monitor


# ------------------------------------------------------------------------------------------- rules

class TestPrometheusRule:
    def test_groups_and_every_alert_by_default(self):
        rule = render.one(render_objects(), "PrometheusRule")
        assert [g["name"] for g in rule["spec"]["groups"]] == ["llm-serving.recording", "llm-serving.alerts"]
        assert sorted(alert_rules([rule])) == sorted(ALERTS)

    def test_alert_names_are_exactly_the_values_keys(self):
        values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
        assert sorted(values["prometheusRule"]["alerts"]) == sorted(ALERTS)

    @pytest.mark.parametrize("name", ALERTS)
    def test_severity_summary_description_runbook(self, name):
        values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())["prometheusRule"]
        rule = alert_rules(render_objects())[name]
        assert rule["labels"] == {"severity": values["alerts"][name]["severity"]}
        assert rule["for"] == values["alerts"][name]["for"]
        assert set(rule["annotations"]) == {"summary", "description", "runbook_url"}
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        assert rule["annotations"]["runbook_url"] == f"{values['runbookBaseUrl']}#{name.lower()}"
        if "threshold" in values["alerts"][name]:
            assert re.search(rf"[<>]=? {re.escape(str(values['alerts'][name]['threshold']))}\b", rule["expr"]), rule["expr"]

    @pytest.mark.parametrize("name", ALERTS)
    def test_runbook_has_a_section_per_alert(self, name):
        headings = re.findall(r"^## (\S+)$", RUNBOOKS.read_text(), re.M)
        assert name in headings
        assert len(headings) == len(set(headings)) == len(ALERTS)

    def test_one_alert_overridden_leaves_the_others(self):
        values = {"prometheusRule": {"alerts": {"LLMServingKVCacheNearlyFull": {"threshold": 0.95, "for": "2m",
                                                                                 "severity": "critical"}}}}
        overridden, default = alert_rules(render_objects(values)), alert_rules(render_objects())
        rule = overridden["LLMServingKVCacheNearlyFull"]
        assert rule["expr"].endswith("> 0.95")
        assert (rule["for"], rule["labels"]["severity"]) == ("2m", "critical")
        assert "(threshold 0.95)" in rule["annotations"]["description"]
        for name in ALERTS:
            if name != "LLMServingKVCacheNearlyFull":
                assert overridden[name] == default[name]

    def test_disabled_alert_is_absent(self):
        values = {"prometheusRule": {"alerts": {"LLMServingGPUIdle": {"enabled": False}}}}
        assert sorted(alert_rules(render_objects(values))) == sorted(set(ALERTS) - {"LLMServingGPUIdle"})

    def test_all_alerts_disabled_keeps_the_recording_rules(self):
        values = {"prometheusRule": {"alerts": {name: {"enabled": False} for name in ALERTS}}}
        rule = render.one(render_objects(values), "PrometheusRule")
        assert [g["name"] for g in rule["spec"]["groups"]] == ["llm-serving.recording"]

    def test_alert_labels_interval_runbook_base(self):
        values = {"prometheusRule": {"alertLabels": {"team": "llm-platform"}, "interval": "30s",
                                     "runbookBaseUrl": "https://wiki.example.com/runbooks"}}
        rule = render.one(render_objects(values), "PrometheusRule")
        assert {g["interval"] for g in rule["spec"]["groups"]} == {"30s"}
        for alert in alert_rules([rule]).values():
            assert alert["labels"]["team"] == "llm-platform" and alert["labels"]["severity"]
            assert alert["annotations"]["runbook_url"].startswith("https://wiki.example.com/runbooks#llmserving")

    def test_dcgm_selector_limits_the_gpu_alerts(self):
        rules = alert_rules(render_objects({"prometheusRule": {"dcgmSelector": 'exported_namespace="llm"'}}))
        for name in ("LLMServingGPUUtilizationHigh", "LLMServingGPUIdle"):
            assert 'DCGM_FI_DEV_GPU_UTIL{exported_namespace="llm"}' in rules[name]["expr"]

    def test_rules_keep_clusters_apart(self):
        """Every recording rule aggregates by namespace and ray_io_cluster."""
        rule = render.one(render_objects(), "PrometheusRule")
        for record in rule["spec"]["groups"][0]["rules"]:
            for aggregation in re.findall(r"\b(?:sum|max) by \(([^)]*)\)", record["expr"]):
                assert {"namespace", "ray_io_cluster"} <= {a.strip() for a in aggregation.split(",")}, record

    def test_disabled(self):
        assert not render.by_kind(render_objects({"prometheusRule": {"enabled": False}}), "PrometheusRule")


class TestPromtool:
    """`promtool check rules` and `promtool test rules` on exactly the rules the chart renders."""

    def rules_dir(self, tmp_path: Path, values: Optional[Dict[str, Any]] = None) -> Path:
        write_rules(mm.rendered_rule_groups(values), tmp_path)
        shutil.copy(PROMTOOL_TESTS, tmp_path / PROMTOOL_TESTS.name)
        return tmp_path

    def test_check_rules(self, tmp_path):
        result = run_promtool("check", "rules", RULES_FILE_NAME, cwd=self.rules_dir(tmp_path))
        assert result.returncode == 0, result.stdout + result.stderr
        assert "SUCCESS: 22 rules found" in result.stdout

    def test_unit_tests_pass(self, tmp_path):
        result = run_promtool("test", "rules", PROMTOOL_TESTS.name, cwd=self.rules_dir(tmp_path))
        assert result.returncode == 0, result.stdout + result.stderr
        assert "SUCCESS" in result.stdout

    def test_unit_tests_notice_a_changed_threshold(self, tmp_path):
        """The tests pin the rendered rules: a different threshold makes the expectations fail."""
        values = {"prometheusRule": {"alerts": {"LLMServingTimeToFirstTokenHigh": {"threshold": 5000}}}}
        result = run_promtool("test", "rules", PROMTOOL_TESTS.name, cwd=self.rules_dir(tmp_path, values))
        assert result.returncode != 0
        assert "alertname: LLMServingTimeToFirstTokenHigh" in result.stdout + result.stderr

    @pytest.mark.parametrize("name", ALERTS)
    def test_each_alert_is_shown_firing_and_silent(self, name):
        tests = yaml.safe_load(PROMTOOL_TESTS.read_text())["tests"]
        cases = [case for test in tests for case in test.get("alert_rule_test", []) if case["alertname"] == name]
        assert any(case.get("exp_alerts") for case in cases), f"no promtool test shows {name} firing"
        assert any(not case.get("exp_alerts") for case in cases), f"no promtool test shows {name} silent"
        # Firing expectations state the alert's labels and annotations in full.
        for case in cases:
            for alert in case.get("exp_alerts") or []:
                assert alert["exp_labels"]["severity"] and set(alert["exp_annotations"]) == {"summary", "description", "runbook_url"}

    def test_dashboard_queries_are_valid_promql(self, tmp_path):
        """Every dashboard query (Grafana variables filled in) parses as PromQL, checked by promtool."""
        rules = []
        for path in mm.dashboard_files():
            for where, kind, query in mm.dashboard_queries(path):
                if kind != "promql":
                    continue
                expr = query.replace("$__rate_interval", "5m").replace("$__interval", "1m")
                expr = re.sub(r"\$\{?\w+\}?", "x", expr)
                rules.append({"record": f"dashboard_check:expr_{len(rules)}", "expr": expr})
        (tmp_path / "dashboards.rules.yaml").write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
        result = run_promtool("check", "rules", "dashboards.rules.yaml", cwd=tmp_path)
        assert result.returncode == 0, result.stdout + result.stderr
        assert len(rules) > 50


# -------------------------------------------------------------------------------------- dashboards

def load_dashboard(name: str) -> Dict[str, Any]:
    return json.loads((mm.DASHBOARDS_DIR / name).read_text())


class TestDashboardConfigMaps:
    def test_one_config_map_per_dashboard_with_sidecar_label_and_folder(self):
        maps = dashboard_maps(render_objects(api=False))
        assert sorted(maps) == sorted(DASHBOARD_UIDS)
        for file_name, config_map in maps.items():
            assert config_map["metadata"]["name"] == f"{RELEASE}-{file_name.removesuffix('.json')}"
            assert config_map["metadata"]["namespace"] == NAMESPACE
            assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
            assert config_map["metadata"]["annotations"] == {"grafana_folder": "LLM Serving"}
            assert json.loads(config_map["data"][file_name]) == load_dashboard(file_name)

    def test_sidecar_label_folder_and_namespace_settable(self):
        values = {"dashboards": {"sidecarLabels": {"grafana_dashboard": "llm", "team": "serving"},
                                 "folderAnnotation": "k8s-sidecar/folder", "folder": "Serving", "namespace": "grafana"}}
        for config_map in dashboard_maps(render_objects(values, api=False)).values():
            labels = config_map["metadata"]["labels"]
            assert (labels["grafana_dashboard"], labels["team"]) == ("llm", "serving")
            assert config_map["metadata"]["annotations"] == {"k8s-sidecar/folder": "Serving"}
            assert config_map["metadata"]["namespace"] == "grafana"

    def test_no_folder_annotation(self):
        maps = dashboard_maps(render_objects({"dashboards": {"folderAnnotation": ""}}, api=False))
        assert all("annotations" not in m["metadata"] for m in maps.values())

    def test_one_dashboard_left_out(self):
        maps = dashboard_maps(render_objects({"dashboards": {"items": {"llm-capacity": {"enabled": False}}}}, api=False))
        assert sorted(maps) == ["llm-engine.json", "llm-overview.json"]

    def test_disabled(self):
        assert not render.by_kind(render_objects({"dashboards": {"enabled": False}}, api=False), "ConfigMap")


@pytest.mark.parametrize("file_name", sorted(DASHBOARD_UIDS))
class TestDashboardJson:
    def test_stable_uid_title_schema_version(self, file_name):
        dashboard = load_dashboard(file_name)
        assert dashboard["uid"] == DASHBOARD_UIDS[file_name]
        assert len(dashboard["uid"]) <= 40  # Grafana's limit
        assert dashboard["title"].startswith("LLM Serving / ")
        assert isinstance(dashboard["schemaVersion"], int) and dashboard["schemaVersion"] >= 36
        assert "id" not in dashboard or dashboard["id"] is None  # Grafana assigns ids per instance

    def test_datasource_variable_and_every_query_uses_it(self, file_name):
        dashboard = load_dashboard(file_name)
        variables = {v["name"]: v for v in dashboard["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource"
        assert variables["datasource"]["query"] == "prometheus"
        for panel in dashboard["panels"]:
            if panel["type"] == "row":
                continue
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
            for target in panel["targets"]:
                assert target["datasource"] == panel["datasource"]
        for variable in variables.values():
            if variable["type"] == "query":
                assert variable["datasource"] == {"type": "prometheus", "uid": "${datasource}"}

    def test_cluster_and_namespace_variables_filter_every_ray_query(self, file_name):
        dashboard = load_dashboard(file_name)
        variables = {v["name"] for v in dashboard["templating"]["list"]}
        assert {"namespace", "cluster"} <= variables
        for where, kind, query in mm.dashboard_queries(mm.DASHBOARDS_DIR / file_name):
            if kind == "promql" and re.search(r"\bray_", query):
                assert 'namespace=~"$namespace"' in query and 'ray_io_cluster=~"$cluster"' in query, where

    def test_panels_ids_grid_and_targets(self, file_name):
        dashboard = load_dashboard(file_name)
        panels = dashboard["panels"]
        ids = [p["id"] for p in panels]
        assert len(ids) == len(set(ids)) and all(isinstance(i, int) for i in ids)
        cells = set()
        for panel in panels:
            grid = panel["gridPos"]
            assert set(grid) == {"h", "w", "x", "y"}
            assert grid["w"] > 0 and grid["h"] > 0 and grid["x"] + grid["w"] <= 24, panel["title"]
            for x in range(grid["x"], grid["x"] + grid["w"]):
                for y in range(grid["y"], grid["y"] + grid["h"]):
                    assert (x, y) not in cells, f"panel {panel['title']!r} overlaps another"
                    cells.add((x, y))
            if panel["type"] == "row":
                continue
            assert panel["title"] and panel.get("description"), panel["id"]
            assert panel["targets"], panel["title"]
            refs = [t["refId"] for t in panel["targets"]]
            assert len(refs) == len(set(refs))
            assert all(t["expr"].strip() for t in panel["targets"])

    def test_variables_used_are_defined(self, file_name):
        dashboard = load_dashboard(file_name)
        defined = {v["name"] for v in dashboard["templating"]["list"]}
        text = json.dumps(dashboard["panels"]) + json.dumps([v.get("definition", "") for v in dashboard["templating"]["list"]])
        used = set(re.findall(r"\$\{?([A-Za-z_]\w*)", text)) - {"__rate_interval", "__interval", "__range"}
        assert used <= defined, used - defined


def test_dashboard_uids_and_titles_are_unique():
    dashboards = [load_dashboard(name) for name in DASHBOARD_UIDS]
    assert len({d["uid"] for d in dashboards}) == len({d["title"] for d in dashboards}) == len(dashboards)
    assert sorted(p.name for p in mm.dashboard_files()) == sorted(DASHBOARD_UIDS)


# -------------------------------------------------------------------------------------- bad values

class TestBadValues:
    @pytest.mark.parametrize(
        "values, message",
        [
            ({"prometheusRule": {"alerts": {"LLMServingTypo": {"enabled": True}}}}, "additional properties 'LLMServingTypo' not allowed"),
            ({"prometheusRule": {"alerts": {"LLMServingGPUIdle": {"severity": "page"}}}}, "/prometheusRule/alerts/LLMServingGPUIdle/severity"),
            ({"prometheusRule": {"alerts": {"LLMServingKVCacheNearlyFull": {"threshold": 90}}}}, "/prometheusRule/alerts/LLMServingKVCacheNearlyFull/threshold"),
            ({"prometheusRule": {"alerts": {"LLMServingTimeToFirstTokenHigh": {"threshold": "2s"}}}}, "/prometheusRule/alerts/LLMServingTimeToFirstTokenHigh/threshold"),
            ({"prometheusRule": {"alerts": {"LLMServingEngineQueueHigh": {"for": "ten minutes"}}}}, "/prometheusRule/alerts/LLMServingEngineQueueHigh/for"),
            ({"prometheusRule": {"alertLabels": {"severity": "page"}}}, "prometheusRule.alertLabels may not set severity"),
            ({"prometheusRule": {"alertLabels": {"team-name": "x"}}}, "invalid propertyName 'team-name'"),
            ({"prometheusRule": {"dcgmSelector": '{exported_namespace="llm"}'}}, "/prometheusRule/dcgmSelector"),
            ({"prometheusRule": {"runbookBaseUrl": "runbooks.md"}}, "/prometheusRule/runbookBaseUrl"),
            ({"podMonitors": {"interval": "30 seconds"}}, "/podMonitors/interval"),
            ({"podMonitors": {"namespaceSelector": {"matchNames": ["LLM"]}}}, "/podMonitors/namespaceSelector/matchNames/0"),
            ({"podMonitors": {"scrapeTimeout": "1m"}}, "podMonitors.scrapeTimeout=1m is longer than podMonitors.interval=30s"),
            ({"podMonitors": {"head": {"enabled": False}, "worker": {"enabled": False}}}, "Enable one of them, or set podMonitors.enabled=false"),
            ({"podMonitors": {"matchLabels": {"ray.io/node-type": "head"}}}, 'podMonitors.matchLabels may not set "ray.io/node-type"'),
            ({"podMonitors": {"rayCluster": "a", "matchLabels": {"ray.io/cluster": "b"}}}, "Keep only podMonitors.rayCluster"),
            ({"dashboards": {"items": {"llm-overveiw": {"enabled": False}}}}, "dashboards.items.llm-overveiw names no dashboard"),
            ({"dashboards": {"folder": ""}}, "Set dashboards.folder, or dashboards.folderAnnotation"),
            ({"dashboards": {"sidecarLabels": {"grafana_dashboard": 1}}}, "/dashboards/sidecarLabels/grafana_dashboard"),
            ({"commonLabels": {"app.kubernetes.io/name": "x"}}, 'may not set "app.kubernetes.io/name"'),
            ({"prometheus": {"selectorLabels": {"helm.sh/chart": "x"}}}, 'may not set "helm.sh/chart"'),
            ({"dashboards": {"sidecarLabels": {"app.kubernetes.io/component": "x"}}}, 'may not set "app.kubernetes.io/component"'),
            ({"commonLabels": {"release": "kps"}, "prometheus": {"selectorLabels": {"release": "kps"}}}, '"release" is in commonLabels and in'),
            ({"prometheus": {"release": "kps"}}, "additional properties 'release' not allowed"),
        ],
    )
    def test_fails_with_a_message_naming_the_fix(self, values, message):
        with pytest.raises(render.HelmError) as error:
            render_objects(values)
        assert message in str(error.value)


# ------------------------------------------------------------------------------ metric name helper

class TestPromqlMetricNames:
    @pytest.mark.parametrize(
        "expr, names",
        [
            ("up", {"up"}),
            ('sum by (model, le) (rate(ray_x_bucket{model=~"$model", le!="+Inf"}[$__rate_interval]))', {"ray_x_bucket"}),
            ("sum(rate(a_total[5m])) by (job) / ignoring(code) group_left sum(b)", {"a_total", "b"}),
            ("histogram_quantile(0.95, sum without (pod) (rate(h_bucket[5m])))", {"h_bucket"}),
            ("a - (a offset 30m or a * 0) and on (ns) max by (ns) (b offset 1h30m)", {"a", "b"}),
            ('label_replace(m, "dst", "$1", "src", "(.*)") > bool 0.5e3', {"m"}),
            ("max_over_time(deriv(g[10m:1m])[1h:]) @ start()", {"g"}),
            ('count_values("version", build_info) or vector(0) unless Inf', {"build_info"}),
            ('{__name__="ray_named"} + on() group_right() topk(3, level:metric:rate5m)', {"ray_named", "level:metric:rate5m"}),
            ("DCGM_FI_DEV_GPU_UTIL{Hostname=~\"$gpu_node\"} # a comment naming not_a_metric", {"DCGM_FI_DEV_GPU_UTIL"}),
            ("sum by (namespace) (x) == 1\nor\nsum by (namespace) (x) == 2", {"x"}),
            ("0x1f + 1e-3 + NaN - -Inf", set()),
        ],
    )
    def test_names(self, expr, names):
        assert mm.promql_metric_names(expr) == names

    def test_atan2_is_an_operator_not_a_metric(self):
        assert mm.promql_metric_names("c atan2 d") == {"c", "d"}

    @pytest.mark.parametrize("expr", ["sum(rate(x[5m])", 'x{a="1"', "x]", '{__name__=~"ray_.*"}'])
    def test_rejects_what_it_cannot_read(self, expr):
        with pytest.raises(mm.PromQLSyntaxError):
            mm.promql_metric_names(expr)

    @pytest.mark.parametrize(
        "query, names",
        [
            ('label_values(ray_serve_deployment_status{namespace=~"$namespace"}, ray_io_cluster)', {"ray_serve_deployment_status"}),
            ("label_values(namespace)", set()),
            ("label_values(DCGM_FI_DEV_GPU_UTIL, Hostname)", {"DCGM_FI_DEV_GPU_UTIL"}),
            ("metrics(ray_vllm_.*)", set()),
            ("query_result(topk(5, sum by (model) (rate(r_total[1h]))))", {"r_total"}),
            ("label_names(up)", {"up"}),
            ("up{job=\"ray\"}", {"up"}),
        ],
    )
    def test_grafana_variable_queries(self, query, names):
        assert mm.grafana_query_metric_names(query) == names


def test_dashboard_queries_reads_collapsed_rows_and_both_variable_forms(tmp_path):
    dashboard = {
        "panels": [
            {"id": 1, "type": "row", "title": "r", "collapsed": True,
             "panels": [{"id": 2, "title": "inner", "targets": [{"refId": "A", "expr": "inner_metric"}]}]},
            {"id": 3, "title": "outer", "targets": [{"refId": "A", "expr": "outer_metric"}, {"refId": "B"}]},
        ],
        "templating": {"list": [
            {"type": "datasource", "name": "datasource", "query": "prometheus"},
            {"type": "query", "name": "a", "query": "label_values(string_form, x)"},
            {"type": "query", "name": "b", "query": {"query": "label_values(object_form, y)", "refId": "b"}},
        ]},
    }
    path = tmp_path / "d.json"
    path.write_text(json.dumps(dashboard))
    queries = list(mm.dashboard_queries(path))
    assert [(kind, query) for _, kind, query in queries] == [
        ("promql", "inner_metric"), ("promql", "outer_metric"),
        ("grafana-variable", "label_values(string_form, x)"), ("grafana-variable", "label_values(object_form, y)"),
    ]
    assert queries[0][0] == "dashboard d.json: panel 2 'inner'"


class TestMetricNamesUsed:
    @pytest.fixture(scope="class")
    def used(self) -> Dict[str, set]:
        return mm.metric_names_used()

    def test_recording_rules_are_not_raw_metrics(self, used):
        assert not [name for name in used if ":" in name]
        groups = mm.rendered_rule_groups()
        assert mm.recorded_names(groups) and not (mm.recorded_names(groups) & set(used))

    def test_raw_metrics_behind_recording_rules_are_included(self, used):
        assert any("record model:llm_serving_time_to_first_token_ms:p95_rate5m" in where
                   for where in used["ray_llm_serving_time_to_first_token_ms_bucket"])
        assert any("alert LLMServingKVCacheNearlyFull" in where for where in used["ray_vllm_kv_cache_usage_perc"])
        assert any("llm-engine.json" in where for where in used["ray_vllm_kv_cache_usage_perc"])

    def test_variables_count_as_uses(self, used):
        assert "dashboard llm-capacity.json: variable gpu_node" in used["DCGM_FI_DEV_GPU_UTIL"]

    def test_only_known_sources(self, used):
        prefixes = ("ray_serve_", "ray_vllm_", "ray_llm_serving_", "ray_node_", "ray_cluster_", "kuberay_", "DCGM_FI_")
        assert sorted(name for name in used if not name.startswith(prefixes)) == []
        # One family of each source the issue asks for is there.
        for name in ("ray_llm_serving_requests_total", "ray_llm_serving_inter_token_latency_ms_bucket",
                     "ray_vllm_num_requests_waiting", "ray_serve_deployment_status", "DCGM_FI_DEV_GPU_UTIL"):
            assert name in used

    def test_disabled_alerts_drop_out(self):
        alerts = {name: {"enabled": False} for name in ALERTS}
        used = mm.metric_names_used({"prometheusRule": {"alerts": alerts}})
        assert not any("alert " in where for places in used.values() for where in places)


def _metric_name_patterns(*package_dirs: str) -> List[re.Pattern]:
    """Every string literal that could be a metric name in the installed packages' Python source, as a
    pattern: f-string placeholders (Serve's f"serve_num_{protocol_name}_requests") match one word."""
    import importlib.util

    patterns = set()
    for package_dir in package_dirs:
        package, _, sub = package_dir.partition("/")
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            pytest.fail(f"{package} is not installed in this environment (run ci/setup.sh)")
        root = Path(list(spec.submodule_search_locations)[0]) / sub
        for path in root.rglob("*.py"):
            patterns.update(re.findall(r'f?"([a-z][a-z0-9_:{}]*)"', path.read_text(errors="replace")))
    # A placeholder stands for one word ("http", "grpc"), never for a whole name.
    return [re.compile(re.sub(r"\\{[^}]*\\}", "[a-z0-9]+", re.escape(p))) for p in patterns]


def _defined(name: str, prefix: str, patterns: List[re.Pattern], code_prefix: str = "") -> bool:
    """Whether the exported `name` comes from a metric defined under one of `patterns`: Ray prepends
    `ray_` and exports counters with `_total`, histograms as `_bucket`/`_sum`/`_count`."""
    base = name[len(prefix):]
    candidates = {base, re.sub(r"_(bucket|sum|count)$", "", base), re.sub(r"_total$", "", base)}
    return any(p.fullmatch(code_prefix + candidate) for candidate in candidates for p in patterns)


class TestMetricNamesExistUpstream:
    """Names are checked against the pinned sources in this environment: a typo or a name from another
    version (e.g. vLLM V0's num_requests_swapped) fails here, before any cluster."""

    @pytest.fixture(scope="class")
    def used(self) -> Dict[str, set]:
        return mm.metric_names_used()

    def test_ray_serve_and_ray_core_names(self, used):
        patterns = _metric_name_patterns("ray/serve", "ray/dashboard/modules/reporter")
        names = [n for n in used if n.startswith(("ray_serve_", "ray_node_", "ray_cluster_"))]
        assert names
        missing = [name for name in names if not _defined(name, "ray_", patterns)]
        assert not missing, f"not defined in the installed Ray: {missing}"

    def test_vllm_engine_names(self, used):
        patterns = _metric_name_patterns("vllm/v1")
        names = [n for n in used if n.startswith("ray_vllm_")]
        assert names
        missing = [name for name in names if not _defined(name, "ray_vllm_", patterns, code_prefix="vllm:")]
        assert not missing, f"not defined in the installed vLLM: {missing}"

    def test_gateway_names(self, used):
        patterns = [re.compile(re.escape(p)) for path in (render.REPO / "image" / "src" / "llm_serving").rglob("*.py")
                    for p in re.findall(r'"([a-z][a-z0-9_]*)"', path.read_text())]
        names = [n for n in used if n.startswith("ray_llm_serving_")]
        assert names
        missing = [name for name in names if not _defined(name, "ray_", patterns)]
        assert not missing, f"not defined by the llm-serving app: {missing}"

    def test_the_check_catches_a_wrong_name(self):
        patterns = _metric_name_patterns("vllm/v1")
        assert _defined("ray_vllm_num_requests_running", "ray_vllm_", patterns, code_prefix="vllm:")
        assert not _defined("ray_vllm_num_requests_swapped", "ray_vllm_", patterns, code_prefix="vllm:")


class TestNotOnCpuList:
    def test_entries_are_used_sourced_and_explained(self):
        listed = mm.metrics_not_on_cpu()
        used = mm.metric_names_used()
        assert set(listed) <= set(used), f"listed but unused: {set(listed) - set(used)}"
        for name, entry in listed.items():
            assert set(entry) == {"source", "reason"}, name
            assert entry["source"] in {"dcgm-exporter", "kuberay-operator", "ray-autoscaler", "ray-serve"}, name
            assert len(entry["reason"]) > 40, name

    def test_every_gpu_and_operator_metric_is_listed(self):
        listed, used = mm.metrics_not_on_cpu(), mm.metric_names_used()
        never_on_cpu = {name for name in used if name.startswith(("DCGM_", "kuberay_"))}
        assert never_on_cpu and never_on_cpu <= set(listed)

    def test_list_stays_small(self):
        listed, used = mm.metrics_not_on_cpu(), mm.metric_names_used()
        assert len(listed) <= len(used) // 5
