"""The hosted-CI workflows: actions pinned by commit, least permissions, and the install job set up
for exactly what the chart's CI scenarios reference (image, Secret, namespace)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from tests.charts import render
from tests.charts.llm_serving_chart import CHART_DIR, head_pod, ray_container, render_chart

WORKFLOWS = sorted((render.REPO / ".github" / "workflows").glob("*.y*ml"))
PINNED = re.compile(r"^\s*(?:-\s+)?uses:\s+(?P<action>[\w.-]+/[\w./-]+)@(?P<ref>\S+)(?P<comment>\s+#\s*(?P<tag>\S+))?\s*$")


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def charts_workflow() -> dict:
    return load(render.REPO / ".github" / "workflows" / "charts.yaml")


def test_there_is_a_charts_workflow():
    assert render.REPO / ".github" / "workflows" / "charts.yaml" in WORKFLOWS


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda path: path.name)
def test_actions_are_pinned_by_full_commit_with_the_tag_in_a_comment(workflow):
    uses = [line for line in workflow.read_text().splitlines() if re.match(r"^\s*(-\s+)?uses:", line)]
    assert uses
    for line in uses:
        match = PINNED.match(line)
        assert match, f"unparsable uses line: {line!r}"
        assert re.fullmatch(r"[0-9a-f]{40}", match.group("ref")), f"{match.group('action')} is not pinned by commit"
        assert match.group("tag") and match.group("tag").startswith("v"), f"{match.group('action')} lacks its version comment"


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda path: path.name)
def test_read_only_by_default_and_writes_only_where_needed(workflow):
    data = load(workflow)
    assert data["permissions"] == {"contents": "read"}
    for name, job in data["jobs"].items():
        writes = {scope for scope, level in (job.get("permissions") or {}).items() if level == "write"}
        if writes:
            assert name == "release", f"job {name} asks for write access: {writes}"
            assert writes <= {"contents", "packages"}


def test_release_runs_on_main_after_everything_passed():
    release = charts_workflow()["jobs"]["release"]
    assert set(release["needs"]) == {"lint", "install", "test"}
    assert "refs/heads/main" in release["if"] and "push" in release["if"]


def test_install_job_provides_what_the_ci_scenarios_reference():
    steps = "\n".join(step.get("run", "") for step in charts_workflow()["jobs"]["install"]["steps"])
    # The image the chart renders for CPU models is built and loaded into kind under the same name.
    scenario = CHART_DIR / "ci" / "features-values.yaml"
    image = ray_container(head_pod(render_chart(values_files=[scenario])))["image"]
    repository, tag = image.rsplit(":", 1)
    assert tag.endswith("-cpu")
    assert f'image="{repository}:${{app_version}}-cpu"' in steps
    # From the repository root: the image takes the app, its lock and the default profile from there.
    assert '-f image/Dockerfile.cpu -t "$image" .\n' in steps and 'kind load docker-image "$image"' in steps
    # The API keys Secret the features scenario mounts exists in the namespace ct installs into.
    secret = yaml.safe_load(scenario.read_text())["apiKeys"]["existingSecret"]
    assert f"create secret generic {secret}" in steps
    assert "ct install --config ct.yaml --charts charts/llm-serving --namespace llm-ci" in steps
    assert "kubectl -n llm-ci create secret" in steps


def test_ci_scenarios_need_no_gpu_and_no_node_pool():
    for scenario in sorted((CHART_DIR / "ci").glob("*-values.yaml")):
        objects = render_chart(values_files=[scenario])
        pods = [head_pod(objects)] + [
            group["template"] for group in render.one(objects, "RayService")["spec"]["rayClusterConfig"]["workerGroupSpecs"]
        ]
        for pod in pods:
            assert "nodeSelector" not in pod["spec"], scenario.name
            assert "nvidia.com/gpu" not in str(ray_container(pod).get("resources")), scenario.name


def all_envs(workflow: dict) -> dict:
    """Every env mapping of a workflow (top level, jobs, steps), merged by key."""
    envs = dict(workflow.get("env") or {})
    for job in workflow["jobs"].values():
        envs.update(job.get("env") or {})
        for step in job.get("steps", []):
            envs.update(step.get("env") or {})
    return envs


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda path: path.name)
def test_nothing_outside_the_checkout_is_needed(workflow):
    # The repository is self-contained: no step reads a folder beside the checkout (the CRD schemas
    # are in tests/schemas/upstream), and no pip index comes from the environment (the lock files
    # name PyTorch's CPU index themselves, so `make test` installs the same way everywhere).
    text = workflow.read_text()
    assert "../" not in text, "a workflow reaches outside the checkout"
    assert not {name for name in all_envs(load(workflow)) if name.startswith("PIP_")}


def test_test_job_runs_the_readme_test_command_on_a_bare_checkout():
    test = charts_workflow()["jobs"]["test"]
    runs = [step["run"] for step in test["steps"] if "run" in step]
    assert runs == ["make test"]
    assert "env" not in test
