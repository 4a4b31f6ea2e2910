"""Every profile in values/ renders, validates and lints, and what it renders is what the app and
Ray Serve accept: the serveConfigV2 args parse with the app's own config model, each model builds
Ray Serve LLM's LLMConfig, and the whole serveConfigV2 passes Ray's ServeDeploySchema."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from llm_serving.app import to_llm_config
from llm_serving.config import parse_app_config
from tests.charts import render
from tests.charts.llm_serving_chart import (
    CHART_DIR,
    PROFILES,
    app_args,
    cluster,
    env,
    ray_container,
    rayservice,
    render_chart,
    serve_config,
    worker_group,
)

VALUES_README = render.VALUES / "README.md"


def profile_id(path: Path) -> str:
    return path.stem


def load(profile: Path) -> dict:
    return yaml.safe_load(profile.read_text())


@pytest.fixture(scope="module", params=PROFILES, ids=profile_id)
def rendered(request):
    return request.param, render_chart(values_files=[request.param])


def test_the_issue_profiles_exist():
    names = {profile.stem for profile in PROFILES}
    assert {"dev-cpu", "single-gpu-8b", "multi-model-gateway", "llama-70b-tp4", "rag-ready", "scale-to-zero",
            "canary-rollout"} <= names


def test_renders_one_rayservice_and_validates(rendered):
    _, objects = rendered  # render_chart validated every object already
    assert rayservice(objects)


@pytest.mark.parametrize("profile", PROFILES, ids=profile_id)
def test_lints_strict(profile):
    assert "0 chart(s) failed" in render.helm("lint", "--strict", str(CHART_DIR), "-f", str(profile), "--namespace", "llm")


def test_app_block_reaches_the_app_verbatim(rendered):
    profile, objects = rendered
    args = app_args(objects)
    expected = load(profile)["app"]
    expected.pop("traffic", None)  # the gateway's user_config, see test_llm_serving_traffic
    if load(profile).get("apiKeys", {}).get("existingSecret"):
        # The only addition the chart makes: where it mounted the keys.
        assert args["gateway"]["auth"]["api_keys"] == {"file": "/etc/llm-serving/api-keys/keys.yaml"}
        expected["gateway"]["auth"].setdefault("api_keys", {})["file"] = "/etc/llm-serving/api-keys/keys.yaml"
    assert args == expected


def test_args_parse_with_the_apps_config_model(rendered):
    _, objects = rendered
    config = parse_app_config(app_args(objects))
    assert config.models


def test_each_model_builds_ray_serve_llms_config(rendered):
    _, objects = rendered
    config = parse_app_config(app_args(objects))
    for name, model in config.models.items():
        llm_config = to_llm_config(name, model)
        assert llm_config.model_id == name
        if model.device == "gpu":
            assert len(llm_config.placement_group_config["bundles"]) == model.tensor_parallel_size


def test_serve_config_passes_rays_schema(rendered):
    _, objects = rendered
    schema = ServeDeploySchema.model_validate(serve_config(objects))
    (application,) = schema.applications
    assert application.import_path == "llm_serving.app:build_app"
    assert application.route_prefix == "/"


def test_non_dev_profiles_use_api_keys_from_a_secret(rendered):
    profile, objects = rendered
    if profile.stem == "dev-cpu":
        assert app_args(objects)["gateway"]["auth"]["mode"] == "none"
        return
    assert app_args(objects)["gateway"]["auth"]["mode"] == "api_key"
    assert load(profile)["apiKeys"]["existingSecret"]


def runs_on_gpus(profile: Path) -> bool:
    return any(model.get("device", "gpu") == "gpu" for model in load(profile)["app"]["models"].values())


GPU_PROFILES = [profile for profile in PROFILES if runs_on_gpus(profile)]


@pytest.mark.parametrize("profile", GPU_PROFILES, ids=profile_id)
def test_gpu_profiles_pin_model_revisions_and_run_on_karpenter_gpu_pools(profile):
    for name, model in load(profile)["app"]["models"].items():
        assert re.fullmatch(r"[0-9a-f]{40}", model.get("revision", "")), f"{name} has no pinned revision"
    objects = render_chart(values_files=[profile])
    assert ray_container(cluster(objects)["headGroupSpec"]["template"])["image"].endswith(":0.1.0")
    for group in cluster(objects)["workerGroupSpecs"]:
        spec = group["template"]["spec"]
        assert spec["nodeSelector"]["llm-serving.io/node-pool"].startswith("gpu-")
        assert {"key": "nvidia.com/gpu", "operator": "Equal", "value": "true", "effect": "NoSchedule"} in spec["tolerations"]


def test_dev_cpu_runs_on_any_cluster_with_the_cpu_image():
    objects = render_chart(values_files=[render.VALUES / "dev-cpu.yaml"])
    head = cluster(objects)["headGroupSpec"]["template"]
    assert "nodeSelector" not in head["spec"]
    assert ray_container(head)["image"].endswith(":0.1.0-cpu")
    group = worker_group(objects, "cpu")
    assert "nodeSelector" not in group["template"]["spec"]
    assert "nvidia.com/gpu" not in str(ray_container(group["template"]).get("resources"))
    assert env(ray_container(group["template"]))["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
    assert rayservice(objects)["spec"]["upgradeStrategy"] == {"type": "None"}


def gpus_at_rest(profile: Path) -> int:
    """GPUs the profile holds with no load: min replicas x tensor-parallel size of each GPU model."""
    args = {key: value for key, value in load(profile)["app"].items() if key != "traffic"}
    config = parse_app_config(args | {"gateway": {"auth": {"mode": "none"}}})
    return sum(
        model.autoscaling.min_replicas * model.tensor_parallel_size
        for model in config.models.values()
        if model.device == "gpu"
    )


@pytest.mark.parametrize("profile", PROFILES, ids=profile_id)
def test_readme_row_states_the_chart_and_the_gpus(profile):
    rows = {
        match.group("name"): match.group(0)
        for match in re.finditer(r"^\| \[`(?P<name>[^`]+)`\]\([^)]*\) \|.*$", VALUES_README.read_text(), flags=re.M)
    }
    assert profile.name in rows, f"values/README.md has no row for {profile.name}"
    cells = [cell.strip() for cell in rows[profile.name].strip("|").split("|")]
    assert cells[1] == "`charts/llm-serving`"
    assert cells[3] == str(gpus_at_rest(profile)), f"{profile.name}: README says {cells[3]} GPUs at rest"
    groups = load(profile).get("workerGroups", {})
    most = sum(group.get("gpus", 0) * group["maxReplicas"] for group in groups.values())
    assert cells[4] == str(most), f"{profile.name}: README says {cells[4]} GPUs at most, the groups allow {most}"


@pytest.mark.parametrize("profile", PROFILES, ids=profile_id)
def test_profile_header_names_nodes_and_gpus(profile):
    header = profile.read_text().split("\napp:")[0]
    assert "helm install" in header and f"values/{profile.name}" in header
    assert re.search(r"GPUs: \d+", header), f"{profile.name}'s header does not say how many GPUs"
    assert re.search(r"GPUs: (\d+)", header).group(1) == str(gpus_at_rest(profile))
