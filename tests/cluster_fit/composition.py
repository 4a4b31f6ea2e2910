"""Composition: the four charts as deploy/flux installs them, and what each expects of the others.

Every HelmRelease of deploy/flux is rendered with the real helm and the values helm-controller would
give it: its inline `values`, over the profile that `valuesFrom` reads from the ConfigMap
`llm-serving-values` (built by kustomization.yaml from a file in values/). The APIs a release can
count on when it installs are simulated from its `dependsOn`: the platform's (Kubernetes, and the
Karpenter CRDs that come with the cluster) plus whatever the releases it waits for provide.

Then the cross-release agreements are checked (`agreements()`), each a row of the table
`print_composition_table()` prints (`python -m tests.cluster_fit.composition`):

- apis-at-install: each release renders, with only the APIs guaranteed when it installs, the same
  objects as with every API served (nothing silently left out by a Capabilities gate), and every kind
  it renders is served by then (else the install fails).
- prometheus-selects: every ServiceMonitor, PodMonitor and PrometheusRule carries the label the
  Prometheus of kube-prometheus-stack selects by default (`release: <its release name>`).
- monitors-find-ray-pods: each PodMonitor of llm-monitoring selects the Ray pods of the llm-serving
  release (the labels of its pod templates plus those KubeRay adds), in their namespace, on a port
  their Ray container declares.
- operator-metrics: the alerts on kuberay_* metrics have a source: the operator runs with
  --enable-metrics and its ServiceMonitor selects its metrics Service, honouring the metrics' own
  `namespace` label (the RayService's), which the rules group by.
- dashboards-loaded: the dashboard ConfigMaps are where kube-prometheus-stack's Grafana sidecar looks.
- serving-timeout: the llm-serving HelmRelease waits at least the profile's initializingTimeout +
  TIMEOUT_MARGIN, and waits on the RayService's Ready condition.
- no-uninstall: a failed install or upgrade of llm-serving never uninstalls the RayService.
- node-pools: the pools the profile's Ray pods select are pools the node-pool release deploys.
- external-secrets: the Secrets the profile's pods mount, which no release renders, are listed as
  prerequisites in deploy/flux/README.md.
- serving-pod-selectors: llm-serving's PodDisruptionBudget and NetworkPolicy select its Ray pods by
  labels those pods carry.
- head-pool-expiry: for every profile in values/, the NodePool its Ray head selects either never
  expires its nodes (`expireAfter: Never`) or the profile has GCS fault tolerance on (the RayService
  renders `gcsFaultToleranceOptions`). Karpenter's expiry is forceful, and without GCS fault
  tolerance the head's restart restarts every replica and engine: a periodic outage of every model.

Facts about other projects are copied here with their source (nothing reads outside the repository):

- KubeRay v1.7.0 (ray-project/kuberay, tag v1.7.0, commit 59d663ae), ray-operator/controllers/ray/
  common/pod.go `labelPod`: a Ray pod's labels are ray.io/is-ray-node=yes, ray.io/cluster=<RayCluster>,
  ray.io/node-type=head|worker, ray.io/group=<group, "headgroup" for the head>, ray.io/identifier,
  app.kubernetes.io/name=kuberay, app.kubernetes.io/created-by=kuberay-operator, then the pod
  template's labels (merged with the group's `labels`) over them, except ray.io/node-type, ray.io/group
  and ray.io/cluster, which cannot be overridden. ray.io/originated-from-cr-name is put on the
  RayCluster (rayservice_controller.go constructRayClusterForRayService) and the Services
  (common/service.go), not on pods. RayCluster names of a RayService are "<RayService>-<5 random
  characters>" (utils/util.go GenerateRayClusterName).
- KubeRay v1.7.0 rayservice_controller.go: `ray.io/initializing-timeout` (utils/constant.go) is a Go
  duration or integer seconds (getInitializingTimeout); past it the RayService gets Ready=False with
  reason InitializingTimeout, terminal (isInitializingTimeout: "The user must delete and recreate the
  RayService to recover").
- KubeRay v1.7.0 common/pod.go `configureGCSFaultTolerance`: GCS fault tolerance is on when the
  RayCluster (copied from the RayService's rayClusterConfig) has `gcsFaultToleranceOptions` (or the
  deprecated annotation `ray.io/ft-enabled: "true"`, which the chart never renders; utils/util.go
  IsGCSFaultToleranceEnabled). Karpenter v1 (NodePool `spec.template.spec.expireAfter`, default 720h,
  `Never` disables it; the default is in tests/schemas/upstream/karpenter.sh/nodepool_v1.json): expiry is forceful, do-not-disrupt pods and budgets do not block it, they wait
  at most `terminationGracePeriod` (karpenter.sh docs, concepts/disruption, "Expiration").
- kube-prometheus-stack: with its default `prometheus.prometheusSpec.{serviceMonitor,podMonitor,rule}
  SelectorNilUsesHelmValues: true` its Prometheus selects `release: <Helm release name>`; its Grafana
  sidecar (`grafana.sidecar.dashboards`, label grafana_dashboard, labelValue "1") watches its own
  namespace unless searchNamespace is set. The release is assumed to be the Flux HelmRelease
  kube-prometheus-stack in namespace monitoring (Helm release name kube-prometheus-stack), the layout of
  fluxcd/flux2-monitoring-example (monitoring/controllers/kube-prometheus-stack/release.yaml);
  deploy/flux/README.md says so.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import re
from pathlib import Path
from typing import Any, Dict, FrozenSet, Iterable, List, Optional, Tuple

import yaml

from tests.charts import render

FLUX = render.REPO / "deploy" / "flux"
FLUX_README = FLUX / "README.md"
# What a user sets in the Flux Kustomization's postBuild.substitute (see deploy/flux/README.md).
SUBSTITUTIONS = {"cluster_name": "llm-prod", "chart_registry": "ghcr.io/example/charts"}

# kube-prometheus-stack as deploy/flux/README.md assumes it (see the module docstring).
KPS_RELEASE = {"name": "kube-prometheus-stack", "namespace": "monitoring"}
KPS_HELM_RELEASE_NAME = "kube-prometheus-stack"
KPS_SELECTOR = {"release": KPS_HELM_RELEASE_NAME}
KPS_DASHBOARD_LABEL = ("grafana_dashboard", "1")
KPS_GRAFANA_NAMESPACE = "monitoring"

# APIs every release can count on: Kubernetes' own (helm template serves those anyway) and the
# Karpenter CRDs, installed with the EKS cluster (deploy/flux/README.md, Prerequisites).
PLATFORM_APIS: FrozenSet[str] = frozenset({"karpenter.sh/v1", "karpenter.k8s.aws/v1"})
# APIs a release brings, by (namespace, name) of its HelmRelease.
PROVIDED_APIS: Dict[Tuple[str, str], FrozenSet[str]] = {
    ("flux-system", "kuberay-operator"): frozenset({"ray.io/v1"}),
    (KPS_RELEASE["namespace"], KPS_RELEASE["name"]): frozenset({"monitoring.coreos.com/v1"}),
}
ALL_APIS: FrozenSet[str] = PLATFORM_APIS.union(*PROVIDED_APIS.values())
MONITORING_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}

# helm-controller's wait must outlast KubeRay's initializing timeout by this much: the Helm apply and
# hooks before the RayService exists, and the operator's requeue before it notices the deadline.
TIMEOUT_MARGIN_SECONDS = 10 * 60

# KubeRay v1.7.0 labelPod (common/pod.go): the labels it sets, and those a template cannot override.
KUBERAY_POD_LABELS = {"ray.io/is-ray-node": "yes", "app.kubernetes.io/name": "kuberay",
                      "app.kubernetes.io/created-by": "kuberay-operator"}
KUBERAY_FIXED_POD_LABELS = ("ray.io/node-type", "ray.io/group", "ray.io/cluster")


# ------------------------------------------------------------------------------------------ loading

def substitute(text: str) -> str:
    return re.sub(r"\$\{([a-z_]+)\}", lambda m: SUBSTITUTIONS[m.group(1)], text)


def duration_seconds(text: Any) -> int:
    """A Go duration ("90m", "1h30m", "45s") or integer seconds (what KubeRay's annotation accepts)."""
    text = str(text).strip()
    if re.fullmatch(r"\d+", text):
        return int(text)
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a duration: {text!r}")
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    return int(sum(float(n) * units[u] for n, u in parts))


@dataclasses.dataclass(frozen=True)
class Flux:
    """The objects of a deploy/flux folder (after ${var} substitution) and the profile it picks."""

    directory: Path
    objects: Tuple[Dict[str, Any], ...]

    @classmethod
    def load(cls, directory: Path = FLUX) -> "Flux":
        kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
        objects = []
        for entry in kustomization["resources"]:
            objects += [d for d in yaml.safe_load_all(substitute((directory / entry).read_text())) if d]
        return cls(directory, tuple(objects))

    @property
    def releases(self) -> Dict[str, Dict[str, Any]]:
        return {o["metadata"]["name"]: o for o in self.objects if o["kind"] == "HelmRelease"}

    def chart_of(self, release: Dict[str, Any]) -> str:
        ref = release["spec"]["chartRef"]
        (source,) = [o for o in self.objects if o["kind"] == ref["kind"] and o["metadata"]["name"] == ref["name"]]
        return source["spec"]["url"].rsplit("/", 1)[1]

    def profile(self) -> Path:
        kustomization = yaml.safe_load((self.directory / "kustomization.yaml").read_text())
        (generator,) = [g for g in kustomization["configMapGenerator"] if g["name"] == "llm-serving-values"]
        (entry,) = generator["files"]
        key, _, path = entry.partition("=")
        assert key == "values.yaml", entry
        return (self.directory / path).resolve()

    def values_files(self, release: Dict[str, Any]) -> List[Path]:
        """The files behind valuesFrom: only the generated profile ConfigMap is supported."""
        files = []
        for ref in release["spec"].get("valuesFrom", []):
            assert (ref["kind"], ref["name"], ref.get("valuesKey")) == ("ConfigMap", "llm-serving-values", "values.yaml"), ref
            files.append(self.profile())
        return files

    def depends_on(self, name: str) -> List[Tuple[str, str]]:
        """(namespace, name) of every HelmRelease `name` waits for, directly or not."""
        release = self.releases[name]
        found: List[Tuple[str, str]] = []
        for dep in release["spec"].get("dependsOn", []):
            key = (dep.get("namespace", release["metadata"]["namespace"]), dep["name"])
            if key in found:
                continue
            found.append(key)
            if key[0] == release["metadata"]["namespace"] and key[1] in self.releases:
                found += [k for k in self.depends_on(key[1]) if k not in found]
        return found

    def apis_at_install(self, name: str) -> FrozenSet[str]:
        return PLATFORM_APIS.union(*(PROVIDED_APIS.get(key, frozenset()) for key in self.depends_on(name)))


def _freeze(value: Any) -> str:
    return yaml.safe_dump(value, sort_keys=True)


@functools.lru_cache(maxsize=None)
def _render(chart: str, values_files: Tuple[str, ...], values_yaml: str, namespace: str, release: str,
            apis: FrozenSet[str]) -> Tuple[Dict[str, Any], ...]:
    return tuple(render.render_chart(chart, values_files=[Path(p) for p in values_files],
                                     values=yaml.safe_load(values_yaml) or None, namespace=namespace,
                                     release=release, api_versions=sorted(apis)))


def checkout_overlay(chart: str) -> Dict[str, Any]:
    """Values that stand in for what packaging adds to a chart of this checkout. The kuberay-operator
    chart's default crds.source=bundled applies CRD files that hack/vendor-crds.py writes into
    files/crds/ before `helm package` (the published chart has them, a git checkout does not; see
    tests/charts/test_kuberay_operator.py). Without them it renders with the URL source: the same
    objects but for the CRD ConfigMaps."""
    if chart == "kuberay-operator" and not list((render.CHARTS / chart / "files" / "crds").glob("*.yaml.gz")):
        return {"crds": {"source": "url"}}
    return {}


def _merged(base: Dict[str, Any], over: Dict[str, Any]) -> Dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def render_release(flux: Flux, name: str, apis: Optional[Iterable[str]] = None,
                   profile: Optional[Path] = None, extra: Optional[Dict[str, Any]] = None) -> List[Dict[str, Any]]:
    """What helm-controller installs for HelmRelease `name`: with the APIs given (default: those its
    dependsOn guarantees) and the profile of kustomization.yaml (or `profile`); `extra` values on top
    (for optional objects the release leaves off)."""
    release = flux.releases[name]
    spec = release["spec"]
    files = flux.values_files(release)
    if profile is not None and files:
        files = [profile]
    values = _merged(_merged(spec.get("values") or {}, checkout_overlay(flux.chart_of(release))), extra or {})
    objects = _render(flux.chart_of(release), tuple(str(p) for p in files), _freeze(values),
                      spec["targetNamespace"], spec.get("releaseName", name),
                      frozenset(flux.apis_at_install(name) if apis is None else apis))
    return copy.deepcopy(list(objects))


# ------------------------------------------------------------------------------------- agreements

@dataclasses.dataclass
class Agreement:
    name: str
    between: str
    expected: str
    found: str
    ok: bool


def _labels(obj: Dict[str, Any]) -> Dict[str, str]:
    return obj["metadata"].get("labels") or {}


def _key(obj: Dict[str, Any]) -> str:
    return f"{obj['kind']}/{obj['metadata']['name']}"


def check_apis_at_install(flux: Flux) -> List[Agreement]:
    rows = []
    for name in sorted(flux.releases):
        apis = flux.apis_at_install(name)
        at_install = render_release(flux, name)
        everything = render_release(flux, name, apis=ALL_APIS)
        dropped = sorted({_key(o) for o in everything} - {_key(o) for o in at_install})
        unserved = sorted({o["apiVersion"] for o in at_install
                           if o["apiVersion"].rpartition("/")[0] not in render.BUILTIN_GROUPS} - apis)
        problems = [f"left out: {', '.join(dropped)}"] if dropped else []
        problems += [f"not served yet: {', '.join(unserved)} (no dependsOn provides it)"] if unserved else []
        rows.append(Agreement(
            "apis-at-install", f"{name} <- {', '.join(n for _, n in flux.depends_on(name)) or 'platform'}",
            "all objects render and their APIs are served when it installs",
            "; ".join(problems) or f"{len(at_install)} objects, APIs {', '.join(sorted(apis - PLATFORM_APIS)) or 'platform'}",
            not problems))
    return rows


def check_prometheus_selects(flux: Flux) -> List[Agreement]:
    rows = []
    for name in sorted(flux.releases):
        monitors = [o for o in render_release(flux, name, apis=ALL_APIS) if o["kind"] in MONITORING_KINDS]
        if not monitors:
            continue
        missing = [_key(o) for o in monitors if any(_labels(o).get(k) != v for k, v in KPS_SELECTOR.items())]
        rows.append(Agreement(
            "prometheus-selects", f"{name} -> kube-prometheus-stack",
            f"{', '.join(f'{k}={v}' for k, v in KPS_SELECTOR.items())} on {len(monitors)} monitors/rules",
            f"missing on {', '.join(missing)}" if missing else "all carry it", not missing))
    return rows


def ray_pods(rayservice: Dict[str, Any]) -> List[Tuple[str, str, Dict[str, str], Dict[str, Any]]]:
    """(group, node type, labels, pod spec) of the Ray pods KubeRay v1.7 creates for a RayService."""
    cluster_name = f"{rayservice['metadata']['name']}-abcde"
    config = rayservice["spec"]["rayClusterConfig"]
    groups = [("headgroup", "head", config["headGroupSpec"])]
    groups += [(g["groupName"], "worker", g) for g in config.get("workerGroupSpecs", [])]
    pods = []
    for group, node_type, spec in groups:
        labels = dict(KUBERAY_POD_LABELS)
        labels.update({"ray.io/cluster": cluster_name, "ray.io/node-type": node_type, "ray.io/group": group})
        template_labels = {**(spec["template"].get("metadata", {}).get("labels") or {}), **(spec.get("labels") or {})}
        labels.update({k: v for k, v in template_labels.items() if k not in KUBERAY_FIXED_POD_LABELS})
        pods.append((group, node_type, labels, spec["template"]["spec"]))
    return pods


def _selects(monitor: Dict[str, Any], pod_namespace: str, labels: Dict[str, str]) -> bool:
    spec = monitor["spec"]
    namespaces = spec.get("namespaceSelector") or {}
    if namespaces.get("matchNames"):
        in_scope = pod_namespace in namespaces["matchNames"]
    else:
        in_scope = namespaces.get("any", False) or pod_namespace == monitor["metadata"]["namespace"]
    selector = spec.get("selector") or {}
    assert not selector.get("matchExpressions"), "matchExpressions are not simulated"
    return in_scope and all(labels.get(k) == v for k, v in (selector.get("matchLabels") or {}).items())


def check_monitors_find_ray_pods(flux: Flux, profile: Optional[Path] = None) -> List[Agreement]:
    serving = flux.releases["llm-serving"]["spec"]
    rayservice = render.one(render_release(flux, "llm-serving", apis=ALL_APIS, profile=profile), "RayService")
    pods = ray_pods(rayservice)
    rows = []
    for monitor in render.by_kind(render_release(flux, "llm-monitoring", apis=ALL_APIS), "PodMonitor"):
        wanted = (monitor["spec"].get("selector") or {}).get("matchLabels", {}).get("ray.io/node-type")
        targets = [p for p in pods if p[1] == wanted] if wanted else pods
        problems = []
        for group, _, labels, pod_spec in targets:
            if not _selects(monitor, serving["targetNamespace"], labels):
                problems.append(f"{group}: no match")
                continue
            ports = {p.get("name") for p in pod_spec["containers"][0].get("ports", [])}
            for endpoint in monitor["spec"]["podMetricsEndpoints"]:
                if endpoint.get("port") not in ports:
                    problems.append(f"{group}: no port {endpoint.get('port')}")
        selector = (monitor["spec"].get("selector") or {}).get("matchLabels", {})
        rows.append(Agreement(
            "monitors-find-ray-pods", f"llm-monitoring -> llm-serving ({monitor['metadata']['name']})",
            f"{','.join(f'{k}={v}' for k, v in sorted(selector.items()))} in {serving['targetNamespace']} "
            f"matches {len(targets)} Ray group(s)",
            "; ".join(problems) or "every group, port metrics", bool(targets) and not problems))
    if not rows:
        rows.append(Agreement("monitors-find-ray-pods", "llm-monitoring -> llm-serving", "PodMonitors",
                              "none rendered", False))
    return rows


def check_operator_metrics(flux: Flux) -> List[Agreement]:
    rules = render.by_kind(render_release(flux, "llm-monitoring", apis=ALL_APIS), "PrometheusRule")
    uses = sorted({m for r in rules for g in r["spec"]["groups"] for rule in g["rules"]
                   for m in re.findall(r"\bkuberay_[a-z_]+", rule["expr"])})
    if not uses:
        return []
    operator = render_release(flux, "kuberay-operator", apis=ALL_APIS)
    problems = []
    (deployment,) = render.by_kind(operator, "Deployment")
    args = " ".join(a for c in deployment["spec"]["template"]["spec"]["containers"] for a in c.get("args", []))
    if "--enable-metrics=true" not in args:
        problems.append("operator runs without --enable-metrics=true")
    monitors = render.by_kind(operator, "ServiceMonitor")
    if not monitors:
        problems.append("no ServiceMonitor")
    for monitor in monitors:
        wanted = monitor["spec"]["selector"]["matchLabels"]
        ports = {e["port"] for e in monitor["spec"]["endpoints"]}
        services = [s for s in render.by_kind(operator, "Service")
                    if all(_labels(s).get(k) == v for k, v in wanted.items())
                    and ports <= {p.get("name") for p in s["spec"]["ports"]}]
        if not services:
            problems.append(f"ServiceMonitor {monitor['metadata']['name']} selects no Service with port {sorted(ports)}")
        # The rules group by the metrics' own `namespace` (the RayService's); without honorLabels the
        # target's namespace (the operator's) would replace it.
        if not all(e.get("honorLabels") for e in monitor["spec"]["endpoints"]):
            problems.append(f"ServiceMonitor {monitor['metadata']['name']} without honorLabels")
    return [Agreement("operator-metrics", "llm-monitoring rules -> kuberay-operator",
                      f"{', '.join(uses)} scraped from the operator", "; ".join(problems) or "metrics on, ServiceMonitor selects its Service",
                      not problems)]


def check_dashboards_loaded(flux: Flux) -> List[Agreement]:
    maps = [o for o in render_release(flux, "llm-monitoring", apis=ALL_APIS) if o["kind"] == "ConfigMap"]
    key, value = KPS_DASHBOARD_LABEL
    wrong = [o["metadata"]["name"] for o in maps
             if _labels(o).get(key) != value or o["metadata"].get("namespace") != KPS_GRAFANA_NAMESPACE]
    return [Agreement("dashboards-loaded", "llm-monitoring -> kube-prometheus-stack Grafana",
                      f"{key}={value} in {KPS_GRAFANA_NAMESPACE}", f"wrong: {', '.join(wrong)}" if wrong else f"{len(maps)} dashboards",
                      bool(maps) and not wrong)]


def profile_initializing_timeout(profile: Path) -> Optional[int]:
    value = (yaml.safe_load(profile.read_text()) or {}).get("initializingTimeout")
    return duration_seconds(value) if value not in (None, "") else None


def check_serving_timeout(flux: Flux, profiles: Optional[Iterable[Path]] = None) -> List[Agreement]:
    spec = flux.releases["llm-serving"]["spec"]
    timeout = duration_seconds(spec.get("install", {}).get("timeout") or spec.get("timeout", "5m"))
    rows = []
    for profile in profiles or [flux.profile()]:
        initializing = profile_initializing_timeout(profile)
        needed = (initializing or 0) + TIMEOUT_MARGIN_SECONDS
        rows.append(Agreement(
            "serving-timeout", f"flux llm-serving -> {profile.relative_to(render.REPO)}",
            f">= initializingTimeout {f'{initializing // 60}m' if initializing else '(none)'} + {TIMEOUT_MARGIN_SECONDS // 60}m",
            f"timeout {timeout // 60}m", timeout >= needed))
    checks = spec.get("healthCheckExprs") or []
    waits = [c for c in checks if (c.get("apiVersion"), c.get("kind")) == ("ray.io/v1", "RayService")
             and "Ready" in c.get("current", "") and "InitializingTimeout" in c.get("failed", "")]
    rows.append(Agreement("serving-timeout", "flux llm-serving -> RayService status",
                          "waits for Ready, fails on InitializingTimeout (healthCheckExprs)",
                          "yes" if waits else "kstatus only (no RayService health check)", bool(waits)))
    return rows


def check_not_ready_alert_waits_for_start_up(flux: Flux, profiles: Iterable[Path]) -> List[Agreement]:
    """LLMServingRayServiceNotReady (critical) must not page during a start-up the profiles allow:
    its `for` as the monitoring release renders it >= the longest initializingTimeout."""
    longest = max((profile_initializing_timeout(p) or 0 for p in profiles), default=0)
    rules = [o for o in render_release(flux, "llm-monitoring", apis=ALL_APIS) if o["kind"] == "PrometheusRule"]
    waits = [duration_seconds(rule["for"]) for o in rules for group in o["spec"]["groups"]
             for rule in group["rules"] if rule.get("alert") == "LLMServingRayServiceNotReady"]
    return [Agreement("not-ready-alert", "llm-monitoring -> llm-serving start-up",
                      f"LLMServingRayServiceNotReady for >= {longest // 60}m (longest initializingTimeout)",
                      f"for {waits[0] // 60}m" if waits else "alert not rendered",
                      bool(waits) and min(waits) >= longest)]


def check_no_uninstall(flux: Flux) -> List[Agreement]:
    spec = flux.releases["llm-serving"]["spec"]
    install, upgrade = spec.get("install", {}), spec.get("upgrade", {})
    problems = []
    if (install.get("strategy") or {}).get("name", "RemediateOnFailure") == "RemediateOnFailure" \
            and (install.get("remediation") or {}).get("retries", 0) != 0:
        problems.append("a failed install is uninstalled before each retry (install.remediation.retries)")
    if (upgrade.get("strategy") or {}).get("name", "RemediateOnFailure") == "RemediateOnFailure" \
            and (upgrade.get("remediation") or {}).get("strategy", "rollback") == "uninstall":
        problems.append("a failed upgrade is remediated by uninstalling")
    return [Agreement("no-uninstall", "flux llm-serving -> RayService",
                      "remediation never uninstalls an initializing RayService",
                      "; ".join(problems) or f"install {(install.get('strategy') or {}).get('name', 'RemediateOnFailure')}, "
                                             f"upgrade {(upgrade.get('remediation') or {}).get('strategy', 'rollback')}",
                      not problems)]


def check_node_pools(flux: Flux, profile: Optional[Path] = None) -> List[Agreement]:
    rayservice = render.one(render_release(flux, "llm-serving", apis=ALL_APIS, profile=profile), "RayService")
    wanted = {p[3].get("nodeSelector", {}).get("llm-serving.io/node-pool") for p in ray_pods(rayservice)} - {None}
    deployed = {p["metadata"]["name"] for p in render.by_kind(render_release(flux, "karpenter-nodepools"), "NodePool")}
    return [Agreement("node-pools", "llm-serving -> karpenter-nodepools", f"pools {', '.join(sorted(wanted)) or '-'}",
                      f"deployed {', '.join(sorted(deployed))}", wanted <= deployed)]


def _secret_refs(node: Any) -> Iterable[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "secretKeyRef" or key == "secretRef":
                yield value["name"]
            elif key == "secret" and isinstance(value, dict) and "secretName" in value:
                yield value["secretName"]
            else:
                yield from _secret_refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _secret_refs(item)


def check_external_secrets(flux: Flux) -> List[Agreement]:
    rendered = {o["metadata"]["name"] for name in flux.releases for o in render_release(flux, name, apis=ALL_APIS)
                if o["kind"] == "Secret"}
    serving = render_release(flux, "llm-serving", apis=ALL_APIS)
    needed = sorted(set(_secret_refs([o for o in serving if o["kind"] != "Pod"])) - rendered)
    readme = (flux.directory / "README.md").read_text()
    undocumented = [s for s in needed if f"`{s}`" not in readme]
    return [Agreement("external-secrets", "llm-serving -> prerequisites (deploy/flux/README.md)",
                      f"{', '.join(needed) or 'none'} documented",
                      f"undocumented: {', '.join(undocumented)}" if undocumented else "listed", not undocumented)]


def check_serving_pod_selectors(flux: Flux, profile: Optional[Path] = None) -> List[Agreement]:
    """llm-serving's own selectors of its Ray pods (PodDisruptionBudget, NetworkPolicy, both turned on
    here even where the profile leaves them off) against the labels KubeRay v1.7 gives those pods."""
    objects = render_release(flux, "llm-serving", apis=ALL_APIS, profile=profile,
                             extra={"podDisruptionBudget": {"enabled": True}, "networkPolicy": {"enabled": True}})
    pods = ray_pods(render.one(objects, "RayService"))
    rows = []
    for obj in objects:
        if obj["kind"] == "PodDisruptionBudget":
            selector = obj["spec"].get("selector", {})
        elif obj["kind"] == "NetworkPolicy":
            selector = obj["spec"].get("podSelector", {})
        else:
            continue
        wanted = selector.get("matchLabels") or {}
        matched = [g for g, _, labels, _ in pods if all(labels.get(k) == v for k, v in wanted.items())]
        rows.append(Agreement(
            "serving-pod-selectors", f"llm-serving {_key(obj)} -> KubeRay pods",
            ",".join(f"{k}={v}" for k, v in sorted(wanted.items())) or "all pods",
            f"matches {', '.join(matched)}" if matched else "matches no Ray pod", bool(matched)))
    return rows


def head_pool(rayservice: Dict[str, Any]) -> Optional[str]:
    """The node pool (llm-serving.io/node-pool) the RayService's head selects, if any."""
    spec = rayservice["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]
    return (spec.get("nodeSelector") or {}).get("llm-serving.io/node-pool")


def gcs_fault_tolerant(rayservice: Dict[str, Any]) -> bool:
    return bool(rayservice["spec"]["rayClusterConfig"].get("gcsFaultToleranceOptions"))


def check_head_pool_expiry(flux: Flux, profiles: Optional[Iterable[Path]] = None) -> List[Agreement]:
    """Per profile: the head's NodePool (as the karpenter-nodepools release deploys it) never expires
    its nodes, or the profile runs the GCS fault tolerant."""
    pools = {p["metadata"]["name"]: p for p in render.by_kind(render_release(flux, "karpenter-nodepools"), "NodePool")}
    rows = []
    for profile in profiles or [flux.profile()]:
        rayservice = render.one(render_release(flux, "llm-serving", apis=ALL_APIS, profile=profile), "RayService")
        pool_name = head_pool(rayservice)
        fault_tolerant = gcs_fault_tolerant(rayservice)
        where = f"{profile.relative_to(render.REPO)} head -> karpenter-nodepools"
        expected = "head pool expireAfter Never, or GCS fault tolerance on"
        if pool_name is None:
            rows.append(Agreement("head-pool-expiry", where, expected, "head selects no node pool (not a Karpenter pool)", True))
            continue
        if pool_name not in pools:
            rows.append(Agreement("head-pool-expiry", where, expected, f"pool {pool_name} not deployed", False))
            continue
        expire_after = str(pools[pool_name]["spec"]["template"]["spec"].get("expireAfter", "720h"))
        ft = "GCS FT on" if fault_tolerant else "GCS FT off"
        rows.append(Agreement("head-pool-expiry", where, expected, f"pool {pool_name} expireAfter {expire_after}, {ft}",
                              expire_after == "Never" or fault_tolerant))
    return rows


def agreements(flux: Optional[Flux] = None) -> List[Agreement]:
    flux = flux or Flux.load()
    return (check_apis_at_install(flux) + check_prometheus_selects(flux) + check_monitors_find_ray_pods(flux)
            + check_operator_metrics(flux) + check_dashboards_loaded(flux)
            + check_serving_timeout(flux, render.profiles("llm-serving"))
            + check_not_ready_alert_waits_for_start_up(flux, render.profiles("llm-serving"))
            + check_no_uninstall(flux) + check_node_pools(flux) + check_external_secrets(flux)
            + check_serving_pod_selectors(flux)
            + check_head_pool_expiry(flux, render.profiles("llm-serving")))


def composition_table(rows: List[Agreement]) -> str:
    header = ["agreement", "between", "expected", "found", "ok"]
    lines = [header] + [[r.name, r.between, r.expected, r.found, "yes" if r.ok else "NO"] for r in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = ["| " + " | ".join(c.ljust(w) for c, w in zip(line, widths)) + " |" for line in lines]
    out.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(out)


def print_composition_table(flux: Optional[Flux] = None) -> List[Agreement]:
    flux = flux or Flux.load()
    rows = agreements(flux)
    print(f"deploy/flux with profile {flux.profile().relative_to(render.REPO)}; serving-timeout and head-pool-expiry rows: every profile in values/")
    print(composition_table(rows))
    return rows


if __name__ == "__main__":
    import sys

    sys.exit(0 if all(r.ok for r in print_composition_table()) else 1)
