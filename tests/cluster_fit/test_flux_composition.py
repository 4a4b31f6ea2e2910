"""deploy/flux as one composition: the charts rendered with the values their HelmReleases give, and
the agreements between them (tests/cluster_fit/composition.py). Each agreement holds for the files as
they are, and each check is shown to catch the defect it is for, on a copy of the HelmReleases with
that defect put back (issue 13: monitors unselected, monitors rendered only if the API is there at
install, a pod selector that matches nothing, timeouts shorter than start-up, uninstall on retry).
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any, Callable, Dict, List

import pytest
import yaml

from tests.charts import render
from tests.cluster_fit import composition as c

FLUX = c.Flux.load()
PROFILES = render.profiles("llm-serving")


def with_release(name: str, change: Callable[[Dict[str, Any]], None]) -> c.Flux:
    """The composition with HelmRelease `name` changed."""
    objects = []
    for obj in FLUX.objects:
        obj = copy.deepcopy(obj)
        if obj["kind"] == "HelmRelease" and obj["metadata"]["name"] == name:
            change(obj["spec"])
        objects.append(obj)
    return dataclasses.replace(FLUX, objects=tuple(objects))


def failing(rows: List[c.Agreement]) -> List[c.Agreement]:
    return [r for r in rows if not r.ok]


# ------------------------------------------------------------------------------ the files as they are

# Agreements that fail in files this suite's owners do not own; each has a strict xfail below, so the
# fix shows up as an XPASS to remove from here.
OPEN_ELSEWHERE: set = set()  # agreements known broken and fixed in another chart (none now)


def test_every_agreement_holds():
    rows = c.agreements(FLUX)
    assert {r.name for r in rows} == {
        "apis-at-install", "prometheus-selects", "monitors-find-ray-pods", "operator-metrics",
        "dashboards-loaded", "serving-timeout", "not-ready-alert", "no-uninstall", "node-pools", "external-secrets",
        "serving-pod-selectors", "head-pool-expiry",
    }
    broken = [r for r in failing(rows) if r.name not in OPEN_ELSEWHERE]
    assert not broken, "\n" + c.composition_table(broken)


def test_serving_pod_selectors_match_the_ray_pods():
    rows = c.check_serving_pod_selectors(FLUX)
    assert rows and not failing(rows), "\n" + c.composition_table(rows)


def test_the_table_prints(capsys):
    rows = c.print_composition_table(FLUX)
    out = capsys.readouterr().out
    assert out.count("\n") == len(rows) + 3
    assert "| agreement" in out and "monitors-find-ray-pods" in out


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.stem)
def test_serving_timeout_covers_every_profile(profile):
    """kustomization.yaml may pick any profile: the HelmRelease's wait must outlast each one's
    initializingTimeout, or Flux fails (and retries) a start-up that is still within KubeRay's limit."""
    rows = c.check_serving_timeout(FLUX, [profile])
    assert not failing(rows), "\n" + c.composition_table(rows)


@pytest.mark.parametrize("profile", [p for p in PROFILES if p.stem != "dev-cpu"], ids=lambda p: p.stem)
def test_monitors_find_the_ray_pods_of_every_gpu_profile(profile):
    rows = c.check_monitors_find_ray_pods(FLUX, profile=profile)
    assert not failing(rows), "\n" + c.composition_table(rows)


def test_the_70b_profiles_need_more_than_45_minutes():
    """The numbers behind the timeout: the profiles allow up to 90 minutes to initialize."""
    longest = max(c.profile_initializing_timeout(p) or 0 for p in PROFILES)
    assert longest == 90 * 60
    assert c.duration_seconds(FLUX.releases["llm-serving"]["spec"]["timeout"]) >= longest + c.TIMEOUT_MARGIN_SECONDS


def test_kube_prometheus_stack_is_a_documented_dependency():
    readme = (c.FLUX / "README.md").read_text()
    assert "`kube-prometheus-stack`" in readme and "`monitoring`" in readme
    for name in ("llm-monitoring", "kuberay-operator"):
        assert c.KPS_RELEASE in FLUX.releases[name]["spec"]["dependsOn"], name


def test_durations():
    assert c.duration_seconds("90m") == 5400
    assert c.duration_seconds("1h45m") == 6300
    assert c.duration_seconds(1800) == 1800  # KubeRay also takes integer seconds
    with pytest.raises(ValueError):
        c.duration_seconds("90 minutes")


def test_kuberay_pod_labels_keep_their_own_keys():
    """KubeRay v1.7 labelPod: template labels win, except node type, group and cluster."""
    rayservice = {"metadata": {"name": "llm-llm-serving"}, "spec": {"rayClusterConfig": {
        "headGroupSpec": {"template": {"metadata": {"labels": {"ray.io/node-type": "worker", "team": "a",
                                                               "app.kubernetes.io/name": "mine"}},
                                       "spec": {"containers": [{}]}}}}}}
    ((group, node_type, labels, _),) = c.ray_pods(rayservice)
    assert (group, node_type) == ("headgroup", "head")
    assert labels["ray.io/node-type"] == "head" and labels["team"] == "a"
    assert labels["app.kubernetes.io/name"] == "mine"
    assert labels["ray.io/cluster"].startswith("llm-llm-serving-")
    assert "ray.io/originated-from-cr-name" not in labels


# --------------------------------------------------------------- each check catches its defect

def test_catches_monitors_without_the_release_label():
    """Issue 13.4: the llm-monitoring HelmRelease set no values, so nothing carried `release`."""
    flux = with_release("llm-monitoring", lambda spec: spec["values"]["prometheus"].pop("selectorLabels"))
    rows = failing(c.check_prometheus_selects(flux))
    assert [r.between for r in rows] == ["llm-monitoring -> kube-prometheus-stack"]
    assert "PodMonitor/llm-monitoring-ray-head" in rows[0].found


def test_catches_monitors_left_out_when_the_api_is_not_there_yet():
    """Issue 13.4: without dependsOn nor assumeApiVersions, an install before the Prometheus Operator's
    API renders dashboards only and reports Ready."""
    def old(spec):
        spec.pop("dependsOn")
        spec["values"].pop("assumeApiVersions")

    rows = failing(c.check_apis_at_install(with_release("llm-monitoring", old)))
    assert [r.between for r in rows] == ["llm-monitoring <- platform"]
    assert "left out: PodMonitor/llm-monitoring-ray-head" in rows[0].found


def test_catches_rendering_for_an_api_no_dependency_provides():
    """assumeApiVersions alone makes the install fail until the CRDs exist: dependsOn orders it."""
    rows = failing(c.check_apis_at_install(with_release("llm-monitoring", lambda spec: spec.pop("dependsOn"))))
    assert len(rows) == 1 and "not served yet: monitoring.coreos.com/v1" in rows[0].found


def test_catches_a_selector_on_a_label_kuberay_does_not_put_on_pods():
    """Issue 13.4: the ci values selected ray.io/originated-from-cr-name (a RayCluster/Service label,
    and `llm` is not even the RayService's name, llm-llm-serving)."""
    def old(spec):
        spec["values"]["podMonitors"]["matchLabels"] = {"ray.io/originated-from-cr-name": "llm-llm-serving"}

    rows = failing(c.check_monitors_find_ray_pods(with_release("llm-monitoring", old)))
    assert len(rows) == 2 and all("no match" in r.found for r in rows)


def test_catches_monitors_in_the_wrong_namespace():
    def other(spec):
        spec["values"]["podMonitors"]["namespaceSelector"] = {"matchNames": ["llm"]}

    assert len(failing(c.check_monitors_find_ray_pods(with_release("llm-monitoring", other)))) == 2


def test_catches_a_timeout_shorter_than_the_profile():
    """Issue 13.5: 45m against the 70B profiles' 90m."""
    flux = with_release("llm-serving", lambda spec: spec.update(timeout="45m"))
    rows = failing(c.check_serving_timeout(flux, PROFILES))
    assert sorted(Path(r.between.split("-> ")[1]).stem for r in rows) == ["llama-70b-tp4", "multi-model-gateway"]


def test_catches_an_install_timeout_shorter_than_the_profile():
    flux = with_release("llm-serving", lambda spec: spec["install"].update(timeout="30m"))
    assert failing(c.check_serving_timeout(flux, [render.VALUES / "single-gpu-8b.yaml"]))


def test_catches_a_wait_that_does_not_look_at_the_rayservice():
    rows = failing(c.check_serving_timeout(with_release("llm-serving", lambda spec: spec.pop("healthCheckExprs"))))
    assert [r.between for r in rows] == ["flux llm-serving -> RayService status"]


def test_catches_uninstall_between_install_retries():
    """Issue 13.5: install.remediation.retries with the default RemediateOnFailure uninstalls the
    RayService (and its model download) before every retry."""
    def old(spec):
        spec["install"].pop("strategy")
        spec["install"]["remediation"] = {"retries": 2}

    rows = failing(c.check_no_uninstall(with_release("llm-serving", old)))
    assert len(rows) == 1 and "uninstalled before each retry" in rows[0].found


def test_catches_uninstall_as_upgrade_remediation():
    flux = with_release("llm-serving", lambda spec: spec["upgrade"]["remediation"].update(strategy="uninstall"))
    assert failing(c.check_no_uninstall(flux))


def test_catches_an_operator_without_metrics():
    flux = with_release("kuberay-operator", lambda spec: spec["values"].update(metrics={"enabled": False}))
    rows = failing(c.check_operator_metrics(flux))
    assert len(rows) == 1 and "--enable-metrics=true" in rows[0].found


def test_catches_an_operator_monitor_that_overwrites_the_rayservice_namespace():
    def off(spec):
        spec["values"]["metrics"]["serviceMonitor"]["honorLabels"] = False

    rows = failing(c.check_operator_metrics(with_release("kuberay-operator", off)))
    assert len(rows) == 1 and "without honorLabels" in rows[0].found


def test_catches_dashboards_outside_grafana_s_namespace():
    flux = with_release("llm-monitoring", lambda spec: spec["values"].update(dashboards={"namespace": "grafana"}))
    assert failing(c.check_dashboards_loaded(flux))


def test_catches_a_pool_the_node_pool_release_does_not_deploy():
    def fewer(spec):
        spec["values"]["nodePools"] = {"gpu-l4": {"enabled": False}, "gpu-l40s": {"enabled": False}}

    flux = with_release("karpenter-nodepools", fewer)
    try:
        rows = c.check_node_pools(flux)
    except render.HelmError as error:  # the chart may refuse to render without a GPU pool at all
        pytest.skip(f"karpenter-nodepools does not render without its GPU pools: {error}")
    assert failing(rows)


def test_catches_an_undocumented_secret(tmp_path):
    for path in c.FLUX.rglob("*"):
        target = tmp_path / path.relative_to(c.FLUX)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(path.read_text())
    (tmp_path / "README.md").write_text("no prerequisites\n")
    kustomization = yaml.safe_load((tmp_path / "kustomization.yaml").read_text())
    for generator in kustomization["configMapGenerator"]:
        generator["files"] = [f"values.yaml={c.FLUX.joinpath('../../values/single-gpu-8b.yaml').resolve()}"]
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    rows = failing(c.check_external_secrets(c.Flux.load(tmp_path)))
    assert len(rows) == 1 and "llm-serving-api-keys" in rows[0].found


# ------------------------------------------------------------------- NOTES.txt tells the recovery

def rendered_notes(tmp_path: Path, profile: Path, namespace: str) -> str:
    """llm-serving's NOTES.txt as the real helm renders it for `profile` (NOTES.txt copied into a
    scratch chart as a ConfigMap: helm template does not print NOTES)."""
    import shutil

    chart = tmp_path / "llm-serving"
    if not chart.exists():
        shutil.copytree(render.CHARTS / "llm-serving", chart, symlinks=True)
        shutil.copy(chart / "templates" / "NOTES.txt", chart / "notes-under-test.txt")
        (chart / "templates" / "notes-under-test.yaml").write_text(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\n"
            'data:\n  notes: {{ tpl (.Files.Get "notes-under-test.txt") . | quote }}\n'
        )
    objects = render.render_chart("llm-serving", values_files=[profile], chart_dir=chart, namespace=namespace,
                                  release="llm", show_only=["templates/notes-under-test.yaml"])
    return render.one(objects, "ConfigMap")["data"]["notes"]


def test_notes_tell_how_to_recover_from_the_initializing_timeout(tmp_path):
    """Issue 13.6: rendered by the real helm (NOTES.txt copied into a scratch chart as a ConfigMap)."""
    def notes(profile: Path) -> str:
        return rendered_notes(tmp_path, profile, namespace="llm-serving")

    text = notes(render.VALUES / "llama-70b-tp4.yaml")
    assert "If it is not Ready within 90m (initializingTimeout)" in text
    assert "kubectl -n llm-serving delete rayservice llm-llm-serving --wait" in text
    assert "flux reconcile helmrelease" in text and "--force" in text
    assert "-l app.kubernetes.io/instance=llm,app.kubernetes.io/part-of=llm-serving" in text
    assert "initializingTimeout" not in notes(render.VALUES / "dev-cpu.yaml")



def test_readme_tells_how_to_recover_from_the_initializing_timeout():
    """Issue 13.6: the chart README's hand-written section (the values table is generated)."""
    readme = (render.CHARTS / "llm-serving" / "README.md").read_text()
    assert "**Recovering from `initializingTimeout`.**" in readme
    assert "kubectl -n llm delete rayservice llm-llm-serving --wait" in readme
    assert "flux reconcile helmrelease llm-serving -n flux-system --force" in readme
    assert "LLMServingRayServiceInitializingTimeout" in readme


def test_the_not_ready_alert_would_page_during_a_70b_start_with_the_charts_default():
    """The monitoring chart's default `for: 30m` pages during a 90m first start of the 70B profiles;
    the Flux release raises it. Without its override, the check catches that."""
    flux = c.Flux.load()
    alerts = flux.releases["llm-monitoring"]["spec"]["values"]["prometheusRule"]["alerts"]
    del alerts["LLMServingRayServiceNotReady"]
    (row,) = c.check_not_ready_alert_waits_for_start_up(flux, c.render.profiles("llm-serving"))
    assert not row.ok and row.found == "for 30m"


# ------------------------------------------------------------------ the head's pool does not expire under it

def test_every_profile_heads_pool_never_expires_or_has_gcs_fault_tolerance():
    rows = c.check_head_pool_expiry(FLUX, PROFILES)
    assert len(rows) == len(PROFILES) and not failing(rows), "\n" + c.composition_table(rows)
    found = {row.between.split()[0]: row.found for row in rows}
    assert found["values/single-gpu-8b.yaml"] == "pool cpu expireAfter Never, GCS FT off"
    assert found["values/high-availability-8b.yaml"] == "pool cpu expireAfter Never, GCS FT on"


def test_an_expiring_head_pool_is_caught_unless_the_profile_has_gcs_fault_tolerance():
    """Issue 14: `expireAfter: 720h` on the `cpu` pool (the old default) is a monthly outage for every
    profile without GCS fault tolerance; the profile with it may run on an expiring pool."""
    flux = with_release("karpenter-nodepools", lambda spec: spec["values"].update(
        nodePoolDefaults={"cpu": {"expireAfter": "720h"}}))
    rows = {row.between.split()[0]: row for row in c.check_head_pool_expiry(flux, PROFILES)}
    assert not rows["values/single-gpu-8b.yaml"].ok
    assert rows["values/single-gpu-8b.yaml"].found == "pool cpu expireAfter 720h, GCS FT off"
    assert rows["values/high-availability-8b.yaml"].ok
    assert rows["values/dev-cpu.yaml"].ok  # no node-pool selector: not on a Karpenter pool
    assert {name for name, row in rows.items() if not row.ok} == {
        f"values/{p.name}" for p in PROFILES if p.stem not in ("dev-cpu", "high-availability-8b")}


def test_notes_tell_that_the_delete_waits_for_the_redis_cleanup_with_gcs_fault_tolerance(tmp_path):
    def notes(profile: Path) -> str:
        return rendered_notes(tmp_path, profile, namespace="llm")

    text = notes(render.VALUES / "high-availability-8b.yaml")
    assert "kubectl -n llm get rayservice llm-llm-serving -o jsonpath=" in text and "InitializingTimeout" in text
    assert "kubectl -n llm delete rayservice llm-llm-serving --wait" in text
    assert "ray.io/gcs-ft-redis-cleanup-finalizer" in text and "redis-master.redis.svc:6379" in text
    assert "gcs-ft-redis-cleanup-finalizer" not in notes(render.VALUES / "single-gpu-8b.yaml")


def test_readme_says_what_the_operator_does_with_gcs_fault_tolerance():
    readme = (render.CHARTS / "llm-serving" / "README.md").read_text()
    section = readme.split("## GCS fault tolerance", 1)[1].split("\n## ", 1)[0]
    for fact in ("RAY_REDIS_ADDRESS", "REDIS_PASSWORD", "RAY_external_storage_namespace",
                 "RAY_gcs_rpc_server_reconnect_timeout_s=600", "ray.io/ft-enabled", "gcs-ft-redis-cleanup-finalizer",
                 "values/high-availability-8b.yaml", "expireAfter: Never"):
        assert fact in section, fact
    recovery = readme.split("**Recovering from `initializingTimeout`.**", 1)[1].split("\n## ", 1)[0]
    assert "ray.io/gcs-ft-redis-cleanup-finalizer" in recovery
