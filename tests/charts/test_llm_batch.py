"""charts/llm-batch: every batch profile in values/ and every CI scenario renders a RayJob that
validates against KubeRay v1.7.0's CRD; the job config reaches the entrypoint verbatim and builds
Ray Data LLM's processor config; cross-field mistakes fail at `helm template` naming the fix."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any, Dict, List

import pytest
import yaml
from ray.data.llm import vLLMEngineProcessorConfig

from llm_serving.batch_job import BatchJobConfig, engine_settings
from tests.charts import render

CHART = "llm-batch"
CHART_DIR = render.CHARTS / CHART
PROFILES = render.profiles(CHART)
SCENARIOS = sorted((CHART_DIR / "ci").glob("*-values.yaml"))
CPU_PROFILE = render.VALUES / "batch-offline-cpu.yaml"
GPU_PROFILE = render.VALUES / "batch-offline-8b.yaml"


def rendered(values_file: Path, values: Dict[str, Any] | None = None) -> List[Dict[str, Any]]:
    return render.render_chart(CHART, values_files=[values_file], values=values)


def rayjob(objects: List[Dict[str, Any]]) -> Dict[str, Any]:
    return render.one(objects, "RayJob")


def job_config(objects: List[Dict[str, Any]]) -> Dict[str, Any]:
    return yaml.safe_load(render.one(objects, "ConfigMap")["data"]["job.yaml"])


def containers(pod_spec: Dict[str, Any]) -> Dict[str, Dict[str, Any]]:
    return {container["name"]: container for container in pod_spec["containers"]}


def env(container: Dict[str, Any]) -> Dict[str, Any]:
    return {item["name"]: item.get("value", item.get("valueFrom")) for item in container.get("env", [])}


def helm_error(values_file: Path, values: Dict[str, Any]) -> str:
    with pytest.raises(render.HelmError) as error:
        rendered(values_file, values)
    return str(error.value)


def test_the_batch_profiles_exist_and_no_serving_test_takes_them():
    assert {p.name for p in PROFILES} == {"batch-offline-cpu.yaml", "batch-offline-8b.yaml"}
    assert not set(PROFILES) & set(render.profiles("llm-serving"))


def test_a_profile_with_both_or_neither_chart_key_is_refused(tmp_path):
    both = tmp_path / "both.yaml"
    both.write_text("app: {}\njob: {}\n")
    with pytest.raises(AssertionError, match="exactly one of the top-level keys"):
        render.profile_chart(both)


@pytest.mark.parametrize("values_file", PROFILES + SCENARIOS, ids=lambda p: p.name)
class TestEveryProfileAndScenario:
    def test_renders_a_configmap_and_a_rayjob_that_validate(self, values_file):
        objects = rendered(values_file)  # render_chart validated each against its schema (RayJob: KubeRay's CRD)
        assert sorted(obj["kind"] for obj in objects) == ["ConfigMap", "RayJob"]

    def test_lints_strict(self, values_file):
        output = render.helm("lint", "--strict", str(CHART_DIR), "-f", str(values_file), "--namespace", "llm")
        assert "0 chart(s) failed" in output

    def test_the_job_block_reaches_the_entrypoint_verbatim(self, values_file):
        objects = rendered(values_file)
        assert job_config(objects) == yaml.safe_load(values_file.read_text())["job"]
        spec = rayjob(objects)["spec"]
        assert spec["entrypoint"] == "llm-serving batch /etc/llm-batch/job.yaml"
        head = spec["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
        mount = next(m for m in containers(head)["ray-head"]["volumeMounts"] if m["name"] == "job-config")
        assert mount["mountPath"] == "/etc/llm-batch"
        volume = next(v for v in head["volumes"] if v["name"] == "job-config")
        assert volume["configMap"]["name"] == render.one(objects, "ConfigMap")["metadata"]["name"]

    def test_the_job_config_builds_ray_data_llms_processor_config(self, values_file):
        job = BatchJobConfig.model_validate(job_config(rendered(values_file)))
        config = vLLMEngineProcessorConfig(model_source=job.model.source, **engine_settings(job.model))
        assert config.engine_kwargs["tensor_parallel_size"] == job.model.tensor_parallel_size

    def test_every_pod_runs_as_the_images_non_root_user(self, values_file):
        spec = rayjob(rendered(values_file))["spec"]
        cluster = spec["rayClusterSpec"]
        pods = [cluster["headGroupSpec"]["template"]["spec"]] + [g["template"]["spec"] for g in cluster.get("workerGroupSpecs", [])]
        if "submitterPodTemplate" in spec:
            pods.append(spec["submitterPodTemplate"]["spec"])
        for pod in pods:
            assert pod["securityContext"]["runAsNonRoot"] is True
            for container in pod["containers"]:
                context = container["securityContext"]
                assert context["allowPrivilegeEscalation"] is False
                assert context["capabilities"] == {"drop": ["ALL"]}


class TestRunToCompletion:
    def test_lifecycle_fields(self):
        spec = rayjob(rendered(GPU_PROFILE))["spec"]
        assert spec["shutdownAfterJobFinishes"] is True
        assert spec["ttlSecondsAfterFinished"] == 600
        assert spec["backoffLimit"] == 1
        assert spec["activeDeadlineSeconds"] == 21600
        assert spec["preRunningDeadlineSeconds"] == 1800
        assert spec["submissionMode"] == "K8sJobMode"
        assert spec["submitterPodTemplate"]["spec"]["restartPolicy"] == "Never"

    def test_no_deadline_by_default(self):
        spec = rayjob(rendered(CPU_PROFILE))["spec"]
        assert "activeDeadlineSeconds" not in spec and "preRunningDeadlineSeconds" not in spec

    def test_sidecar_mode_has_no_submitter_template(self):
        # KubeRay v1.7.0 refuses one (ray-operator/controllers/ray/utils/validation.go, ValidateRayJobSpec).
        spec = rayjob(rendered(CHART_DIR / "ci" / "features-values.yaml"))["spec"]
        assert spec["submissionMode"] == "SidecarMode" and spec["suspend"] is True
        assert "submitterPodTemplate" not in spec and "submitterConfig" not in spec


class TestKarpenterPools:
    def test_gpu_group_on_its_pool_with_the_taint_tolerated_and_its_resource(self):
        cluster = rayjob(rendered(GPU_PROFILE))["spec"]["rayClusterSpec"]
        (group,) = cluster["workerGroupSpecs"]
        assert group["groupName"] == "l40s-1x" and group["minReplicas"] == 0 and group["maxReplicas"] == 4
        assert group["resources"] == {"accelerator_type:L40S": "1", "llm-serving-group:l40s-1x": "1"}
        pod = group["template"]["spec"]
        assert pod["nodeSelector"] == {"llm-serving.io/node-pool": "gpu-l40s"}
        assert {"key": "nvidia.com/gpu", "operator": "Equal", "value": "true", "effect": "NoSchedule"} in pod["tolerations"]
        worker = containers(pod)["ray-worker"]
        assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert worker["image"] == "ghcr.io/llm-serving/llm-serving:0.1.0"
        head = cluster["headGroupSpec"]["template"]["spec"]
        assert head["nodeSelector"] == {"llm-serving.io/node-pool": "cpu"}
        assert cluster["headGroupSpec"]["template"]["metadata"]["annotations"] == {"karpenter.sh/do-not-disrupt": "true"}

    def test_the_engines_bundles_ask_for_the_group_the_chart_advertises(self):
        objects = rendered(GPU_PROFILE)
        settings = engine_settings(BatchJobConfig.model_validate(job_config(objects)).model)
        (bundle,) = settings["placement_group_config"]["bundles"]
        (group,) = rayjob(objects)["spec"]["rayClusterSpec"]["workerGroupSpecs"]
        assert set(bundle) - {"CPU", "GPU"} <= set(group["resources"])
        assert bundle["GPU"] == 1 and settings["accelerator_type"] == "L40S"

    def test_cpu_profile_uses_the_cpu_image_and_the_cpu_engine_settings(self):
        objects = rendered(CPU_PROFILE)
        cluster = rayjob(objects)["spec"]["rayClusterSpec"]
        worker = containers(cluster["workerGroupSpecs"][0]["template"]["spec"])["ray-worker"]
        assert worker["image"].endswith("-cpu")
        assert env(worker)["VLLM_CPU_KVCACHE_SPACE"] == "1"
        settings = engine_settings(BatchJobConfig.model_validate(job_config(objects)).model)
        assert settings["placement_group_config"] == {"bundles": [{"CPU": 1}]}


class TestStorage:
    def test_s3_credentials_only_by_secret_reference(self):
        cluster = rayjob(rendered(GPU_PROFILE))["spec"]["rayClusterSpec"]
        for pod in [cluster["headGroupSpec"]["template"]["spec"], cluster["workerGroupSpecs"][0]["template"]["spec"]]:
            variables = env(pod["containers"][0])
            assert variables["AWS_ACCESS_KEY_ID"] == {"secretKeyRef": {"name": "llm-batch-s3", "key": "AWS_ACCESS_KEY_ID"}}
            assert variables["AWS_SECRET_ACCESS_KEY"] == {"secretKeyRef": {"name": "llm-batch-s3", "key": "AWS_SECRET_ACCESS_KEY"}}
            assert variables["HF_TOKEN"] == {"secretKeyRef": {"name": "hf-token", "key": "token"}}

    def test_the_claim_is_mounted_on_every_ray_pod(self):
        cluster = rayjob(rendered(CPU_PROFILE))["spec"]["rayClusterSpec"]
        for pod in [cluster["headGroupSpec"]["template"]["spec"], cluster["workerGroupSpecs"][0]["template"]["spec"]]:
            assert {"name": "data", "persistentVolumeClaim": {"claimName": "llm-batch-data"}} in pod["volumes"]
            assert {"name": "data", "mountPath": "/data"} in pod["containers"][0]["volumeMounts"]


class TestRefusals:
    """templates/validate.yaml and the generated schema: each message names the key and the fix."""

    def test_without_a_profile_the_schema_asks_for_the_job(self):
        with pytest.raises(render.HelmError, match="at '/job': missing properties 'model', 'input', 'output'"):
            render.render_chart(CHART)

    @pytest.mark.parametrize(
        "profile, override, message",
        [
            (GPU_PROFILE, {"job": {"model": {"worker_group": "h100"}}},
             'job.model.worker_group "h100" is not a key of workerGroups; add workerGroups.h100'),
            (GPU_PROFILE, {"job": {"model": {"tensor_parallel_size": 2}}},
             "no worker group named \"l40s-1x\" has that many gpus per pod; add a workerGroups entry with gpus >= 2"),
            (GPU_PROFILE, {"job": {"engine_replicas": 5}},
             "job.engine_replicas is 5, but the GPU worker groups fit at most 4 engines"),
            (CPU_PROFILE, {"workerGroups": {"cpu": {"maxReplicas": 0}}},
             "no Ray node offers CPUs to its engine: head.rayStartParams num-cpus is \"0\" and no workerGroups entry"),
            (CPU_PROFILE, {"storage": {"pvc": {"existingClaim": ""}}},
             'job.input.uri "/data/batch/requests.jsonl" is a path, but no volume is mounted: set storage.pvc.existingClaim'),
            (CPU_PROFILE, {"job": {"output": {"uri": "/tmp/out"}}},
             'job.output.uri "/tmp/out" is not under storage.pvc.mountPath "/data"'),
            (CPU_PROFILE, {"rayJob": {"suspend": True, "shutdownAfterJobFinishes": False}},
             "rayJob.suspend needs rayJob.shutdownAfterJobFinishes: true"),
            (CPU_PROFILE, {"rayJob": {"submissionMode": "InteractiveMode"}}, "/rayJob/submissionMode"),
            (CPU_PROFILE, {"job": {"input": {"formt": "csv"}}}, "additional properties 'formt' not allowed"),
            (CPU_PROFILE, {"job": {"engine_replicas": 0}}, "/job/engine_replicas"),
            (CPU_PROFILE, {"storage": {"s3": {"accessKey": "AKIA..."}}}, "additional properties 'accessKey' not allowed"),
        ],
        ids=lambda v: v.name if isinstance(v, Path) else None,
    )
    def test_refused_naming_the_fix(self, profile, override, message):
        assert message in helm_error(profile, copy.deepcopy(override))


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.stem)
def test_values_readme_row_names_the_chart_and_the_gpus(profile):
    rows = {
        match.group("name"): match.group(0)
        for match in re.finditer(r"^\| \[`(?P<name>[^`]+)`\]\([^)]*\) \|.*$", (render.VALUES / "README.md").read_text(), flags=re.M)
    }
    cells = [cell.strip() for cell in rows[profile.name].strip("|").split("|")]
    groups = yaml.safe_load(profile.read_text()).get("workerGroups", {})
    assert cells[1] == "`charts/llm-batch`"
    assert cells[3] == str(sum(g.get("gpus", 0) * g.get("minReplicas", 0) for g in groups.values()))
    assert cells[4] == str(sum(g.get("gpus", 0) * g["maxReplicas"] for g in groups.values()))
