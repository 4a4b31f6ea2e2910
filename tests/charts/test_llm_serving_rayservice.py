"""templates/rayservice.yaml: the RayService, field by field (every render is schema-validated)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from tests.charts import render
from tests.charts.llm_serving_chart import (
    CHART_DIR,
    CPU_VALUES,
    GPU_TAINT_TOLERATION,
    GPU_VALUES,
    NODE_POOL_LABEL,
    PROFILES,
    app_args,
    cluster,
    env,
    head_pod,
    helm_error,
    merged,
    mounts,
    ray_container,
    rayservice,
    render_chart,
    render_cpu,
    render_gpu,
    serve_config,
    volumes,
    worker_group,
)

FAST_PATH = ("RAY_SERVE_THROUGHPUT_OPTIMIZED", "RAY_SERVE_ENABLE_HA_PROXY", "RAY_SERVE_LLM_ENABLE_DIRECT_STREAMING")
GIB = 2**30


class TestServeConfig:
    def test_one_application_running_the_app_builder_on_the_whole_route(self):
        config = serve_config(render_gpu())
        (application,) = config["applications"]
        assert application["name"] == "llm-serving"
        assert application["import_path"] == "llm_serving.app:build_app"
        assert application["route_prefix"] == "/"

    def test_serve_config_is_a_string_as_the_crd_requires(self):
        assert isinstance(rayservice(render_gpu())["spec"]["serveConfigV2"], str)

    def test_app_block_passes_through_verbatim(self):
        app = {
            "models": {
                "chat": {
                    "source": "org/chat",
                    "revision": "0123abc",
                    "accelerator_type": "L40S",
                    "max_model_len": 4096,
                    "engine_kwargs": {"gpu_memory_utilization": 0.85, "enable_prefix_caching": True, "quantization": "fp8"},
                    "autoscaling": {"min_replicas": 1, "max_replicas": 3, "target_ongoing_requests": 24.5},
                }
            },
            "gateway": {"auth": {"mode": "none"}, "cors_allow_origins": ["https://a.example"], "max_request_bytes": 4194304},
        }
        values = merged(GPU_VALUES, {"apiKeys": {"existingSecret": ""}})
        values["app"] = app
        assert app_args(render_chart(values)) == app

    def test_api_keys_secret_sets_the_keys_file_and_keeps_the_rest(self):
        values = merged(GPU_VALUES, {"app": {"gateway": {"auth": {"mode": "api_key"}, "cors_allow_origins": ["*"]}}})
        args = app_args(render_chart(values))
        assert args["gateway"]["auth"] == {"mode": "api_key", "api_keys": {"file": "/etc/llm-serving/api-keys/keys.yaml"}}
        assert args["gateway"]["cors_allow_origins"] == ["*"]
        assert args["models"] == GPU_VALUES["app"]["models"]

    def test_keys_file_path_follows_the_secret_key(self):
        args = app_args(render_gpu({"apiKeys": {"key": "tenants.json"}}))
        assert args["gateway"]["auth"]["api_keys"]["file"] == "/etc/llm-serving/api-keys/tenants.json"

    def test_keys_file_already_at_the_mount_path_is_accepted(self):
        args = app_args(render_gpu({"app": {"gateway": {"auth": {"api_keys": {"file": "/etc/llm-serving/api-keys/keys.yaml"}}}}}))
        assert args["gateway"]["auth"]["api_keys"]["file"] == "/etc/llm-serving/api-keys/keys.yaml"

    def test_keys_from_an_environment_variable_need_no_mount(self):
        values = merged(
            GPU_VALUES,
            {
                "apiKeys": {"existingSecret": ""},
                "app": {"gateway": {"auth": {"api_keys": {"env": "LLM_KEYS"}}}},
                "secretEnv": {"LLM_KEYS": {"secretName": "keys", "key": "keys.yaml"}},
            },
        )
        objects = render_chart(values)
        assert app_args(objects)["gateway"]["auth"] == {"api_keys": {"env": "LLM_KEYS"}}
        assert "api-keys" not in volumes(head_pod(objects))


class TestMetadataAndSpec:
    def test_name_and_labels(self):
        rs = rayservice(render_gpu(release="prod"))
        assert rs["metadata"]["name"] == "prod-llm-serving"
        assert rs["metadata"]["labels"]["helm.sh/chart"].startswith("llm-serving-")
        assert rs["metadata"]["labels"]["app.kubernetes.io/instance"] == "prod"

    def test_release_named_like_the_chart_is_not_repeated(self):
        assert rayservice(render_gpu(release="llm-serving-prod"))["metadata"]["name"] == "llm-serving-prod"

    def test_common_labels_reach_chart_objects(self):
        rs = rayservice(render_gpu({"commonLabels": {"team": "ml"}}))
        assert rs["metadata"]["labels"]["team"] == "ml"

    def test_name_is_cut_to_53_characters_without_a_trailing_dash(self):
        # KubeRay appends -serve-svc to the RayService name; 53 + 10 fits a 63-character Service name.
        rs = rayservice(render_gpu(release="r" * 52))
        assert rs["metadata"]["name"] == "r" * 52

    def test_fullname_override(self):
        assert rayservice(render_gpu({"fullnameOverride": "chat"}))["metadata"]["name"] == "chat"

    def test_defaults(self):
        spec = rayservice(render_gpu())["spec"]
        assert spec["upgradeStrategy"] == {"type": "NewCluster"}
        assert spec["rayClusterDeletionDelaySeconds"] == 60
        assert spec["excludeHeadPodFromServeSvc"] is False
        assert "annotations" not in rayservice(render_gpu())["metadata"]
        # Ignored by KubeRay since v1.1 (ray-project/kuberay#1685): never rendered.
        assert "serviceUnhealthySecondThreshold" not in spec
        assert "deploymentUnhealthySecondThreshold" not in spec

    def test_initializing_timeout_annotation(self):
        rs = rayservice(render_gpu({"initializingTimeout": "45m"}))
        assert rs["metadata"]["annotations"] == {"ray.io/initializing-timeout": "45m"}

    def test_serve_service_is_kuberays_own_customized(self):
        spec = rayservice(render_gpu({"serveService": {"type": "LoadBalancer", "annotations": {"lb": "internal"}}}))["spec"]
        service = spec["serveService"]
        assert "name" not in service["metadata"], "KubeRay names it <rayservice>-serve-svc"
        assert service["metadata"]["annotations"] == {"lb": "internal"}
        assert service["spec"] == {"type": "LoadBalancer", "ports": [{"name": "serve", "port": 8000}]}

    def test_cluster_settings(self):
        config = cluster(render_gpu())
        assert config["rayVersion"] == "2.60.0"
        assert config["enableInTreeAutoscaling"] is True
        assert config["autoscalerOptions"]["version"] == "v2"
        assert config["autoscalerOptions"]["upscalingMode"] == "Default"
        assert config["autoscalerOptions"]["idleTimeoutSeconds"] == 300

    def test_autoscaler_off(self):
        values = merged(GPU_VALUES, {"autoscaler": {"enabled": False}, "workerGroups": {"l40s": {"minReplicas": 1}}})
        objects = render_chart(values)
        assert cluster(objects)["enableInTreeAutoscaling"] is False
        assert "autoscalerOptions" not in cluster(objects)
        assert head_pod(objects)["spec"]["automountServiceAccountToken"] is False


class TestUpgradeStrategy:
    @pytest.mark.parametrize("strategy", ["NewCluster", "None"])
    def test_simple_strategies_have_no_options(self, strategy):
        spec = rayservice(render_gpu({"upgradeStrategy": {"type": strategy}}))["spec"]
        assert spec["upgradeStrategy"] == {"type": strategy}
        assert "serveService" in spec

    def test_incremental_upgrade_renders_its_options_and_leaves_services_to_kuberay(self):
        spec = rayservice(
            render_gpu(
                {
                    "upgradeStrategy": {
                        "type": "NewClusterWithIncrementalUpgrade",
                        "clusterUpgradeOptions": {"gatewayClassName": "istio", "maxSurgePercent": 25, "stepSizePercent": 5},
                    }
                }
            )
        )["spec"]
        assert spec["upgradeStrategy"] == {
            "type": "NewClusterWithIncrementalUpgrade",
            "clusterUpgradeOptions": {
                "gatewayClassName": "istio",
                "maxSurgePercent": 25,
                "stepSizePercent": 5,
                "intervalSeconds": 60,
            },
        }
        assert "serveService" not in spec


class TestHead:
    def test_takes_no_serve_replicas_and_lands_on_the_cpu_pool(self):
        objects = render_gpu()
        head_group = cluster(objects)["headGroupSpec"]
        # Ray's object store: 80% of the head's 2Gi /dev/shm (TestObjectStore).
        assert head_group["rayStartParams"] == {"num-cpus": "0", "object-store-memory": str(2 * GIB * 4 // 5)}
        spec = head_group["template"]["spec"]
        assert spec["nodeSelector"] == {NODE_POOL_LABEL: "cpu"}
        assert "tolerations" not in spec

    def test_no_node_pool_means_no_selector(self):
        assert "nodeSelector" not in head_pod(render_cpu())["spec"]

    def test_ports_resources_and_no_model_cache(self):
        pod = head_pod(render_gpu())
        container = ray_container(pod)
        assert container["name"] == "ray-head"
        assert {p["name"]: p["containerPort"] for p in container["ports"]} == {
            "gcs-server": 6379, "dashboard": 8265, "client": 10001, "serve": 8000, "metrics": 8080,
        }
        assert container["resources"] == {"requests": {"cpu": "2", "memory": "8Gi"}, "limits": {"memory": "8Gi"}}
        assert "/models" not in mounts(container)
        assert "HF_HOME" not in env(container)
        assert volumes(pod)["shared-mem"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "2Gi"}

    def test_service_account_token_only_for_the_autoscaler(self):
        objects = render_gpu()
        assert head_pod(objects)["spec"]["serviceAccountName"] == "test-llm-serving"
        assert head_pod(objects)["spec"]["automountServiceAccountToken"] is True
        assert worker_group(objects, "l40s")["template"]["spec"]["automountServiceAccountToken"] is False

    def test_without_a_service_account_kuberay_picks_one(self):
        objects = render_gpu({"serviceAccount": {"create": False}})
        assert "serviceAccountName" not in head_pod(objects)["spec"]
        assert "serviceAccountName" not in worker_group(objects, "l40s")["template"]["spec"]


class TestWorkerGroups:
    def test_gpu_group_shape(self):
        group = worker_group(render_gpu(), "l40s")
        assert group["minReplicas"] == 0 and group["maxReplicas"] == 2
        assert group["rayStartParams"] == {"object-store-memory": str(8 * GIB * 4 // 5)}
        # The autoscaler knows the accelerator type and the group before any pod exists (scale from
        # zero); models that name the group in worker_group ask for llm-serving-group:<name>.
        assert group["resources"] == {"accelerator_type:L40S": "1", "llm-serving-group:l40s": "1"}
        spec = group["template"]["spec"]
        assert spec["nodeSelector"] == {NODE_POOL_LABEL: "gpu-l40s"}
        assert spec["tolerations"] == [GPU_TAINT_TOLERATION]
        container = ray_container(group["template"])
        assert container["name"] == "ray-worker"
        assert container["resources"] == {
            "requests": {"cpu": "3", "memory": "24Gi", "nvidia.com/gpu": 1},
            "limits": {"memory": "28Gi", "nvidia.com/gpu": 1},
        }

    def test_cpu_group_has_no_gpu_resources_taint_or_accelerator(self):
        group = worker_group(render_cpu(), "cpu")
        container = ray_container(group["template"])
        assert "nvidia.com/gpu" not in str(container.get("resources", {}))
        assert "tolerations" not in group["template"]["spec"]
        assert "resources" not in group
        assert "nodeSelector" not in group["template"]["spec"]

    def test_groups_are_a_map_one_can_be_overridden(self):
        objects = render_gpu(
            {
                "workerGroups": {"l40s": {"maxReplicas": 5}, "l40s-4x": {"gpus": 4, "acceleratorType": "L40S", "maxReplicas": 1}},
                "app": {"models": {"chat": {"worker_group": "l40s"}}},  # two GPU groups: the model names one
            }
        )
        assert worker_group(objects, "l40s")["maxReplicas"] == 5
        assert worker_group(objects, "l40s")["minReplicas"] == 0
        four = ray_container(worker_group(objects, "l40s-4x")["template"])
        assert four["resources"]["limits"]["nvidia.com/gpu"] == 4

    def test_extra_scheduling_settings_are_merged(self):
        toleration = {"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}
        group = worker_group(
            render_gpu(
                {
                    "workerGroups": {
                        "l40s": {
                            "nodeSelector": {"topology.kubernetes.io/zone": "us-east-1a"},
                            "tolerations": [toleration],
                            "priorityClassName": "llm-critical",
                            "idleTimeoutSeconds": 30,
                            "sharedMemorySizeLimit": "24Gi",
                        }
                    }
                }
            ),
            "l40s",
        )
        spec = group["template"]["spec"]
        assert spec["nodeSelector"] == {NODE_POOL_LABEL: "gpu-l40s", "topology.kubernetes.io/zone": "us-east-1a"}
        assert spec["tolerations"] == [GPU_TAINT_TOLERATION, toleration]
        assert spec["priorityClassName"] == "llm-critical"
        assert group["idleTimeoutSeconds"] == 30
        assert volumes(group["template"])["shared-mem"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "24Gi"}

    def test_shared_memory_default(self):
        pod = worker_group(render_gpu({"sharedMemory": {"sizeLimit": "12Gi"}}), "l40s")["template"]
        assert volumes(pod)["shared-mem"]["emptyDir"]["sizeLimit"] == "12Gi"
        assert mounts(ray_container(pod))["/dev/shm"]["name"] == "shared-mem"


class TestPodTemplates:
    def test_pod_labels_carry_no_version(self):
        """A chart upgrade must not change the cluster spec, or KubeRay rolls a whole new GPU cluster."""
        labels = head_pod(render_gpu())["metadata"]["labels"]
        assert labels == {
            "app.kubernetes.io/instance": "test",
            "app.kubernetes.io/part-of": "llm-serving",
            "app.kubernetes.io/component": "ray-head",
        }

    def test_chart_version_bump_leaves_the_cluster_spec_unchanged(self, tmp_path: Path):
        copy_dir = tmp_path / "llm-serving"
        shutil.copytree(CHART_DIR, copy_dir, symlinks=True)
        chart_yaml = yaml.safe_load((copy_dir / "Chart.yaml").read_text())
        chart_yaml["version"] = "99.0.0"
        (copy_dir / "Chart.yaml").write_text(yaml.safe_dump(chart_yaml))
        bumped = render.render_chart("llm-serving", values=GPU_VALUES, chart_dir=copy_dir)
        original = render_gpu()
        assert rayservice(bumped)["metadata"]["labels"]["helm.sh/chart"] == "llm-serving-99.0.0"
        assert cluster(bumped) == cluster(original)

    def test_karpenter_do_not_disrupt(self):
        objects = render_gpu({"head": {"podAnnotations": {"a": "b"}}})
        assert head_pod(objects)["metadata"]["annotations"] == {"karpenter.sh/do-not-disrupt": "true", "a": "b"}
        off = render_gpu({"karpenter": {"doNotDisrupt": False}})
        assert "annotations" not in worker_group(off, "l40s")["template"]["metadata"]

    @pytest.mark.parametrize("pod", ["head", "worker"])
    def test_secure_contexts(self, pod):
        objects = render_gpu()
        template = head_pod(objects) if pod == "head" else worker_group(objects, "l40s")["template"]
        pod_context = template["spec"]["securityContext"]
        assert pod_context["runAsNonRoot"] is True and pod_context["runAsUser"] == 1000
        assert pod_context["seccompProfile"] == {"type": "RuntimeDefault"}
        context = ray_container(template)["securityContext"]
        assert context["allowPrivilegeEscalation"] is False
        assert context["privileged"] is False
        assert context["capabilities"] == {"drop": ["ALL"]}
        assert context["runAsNonRoot"] is True and context["runAsUser"] == 1000
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}

    def test_autoscaler_sidecar_gets_the_same_container_context(self):
        options = cluster(render_gpu())["autoscalerOptions"]
        assert options["securityContext"]["capabilities"] == {"drop": ["ALL"]}
        assert options["securityContext"]["allowPrivilegeEscalation"] is False


class TestImage:
    def test_gpu_models_get_the_default_image(self):
        container = ray_container(head_pod(render_gpu()))
        assert container["image"] == "ghcr.io/llm-serving/llm-serving:0.1.0"
        assert container["imagePullPolicy"] == "IfNotPresent"

    def test_cpu_models_get_the_cpu_variant_everywhere(self):
        objects = render_cpu()
        assert ray_container(head_pod(objects))["image"] == "ghcr.io/llm-serving/llm-serving:0.1.0-cpu"
        assert ray_container(worker_group(objects, "cpu")["template"])["image"].endswith(":0.1.0-cpu")
        test_pod = render.one(objects, "Pod")
        assert test_pod["spec"]["containers"][0]["image"].endswith(":0.1.0-cpu")

    def test_explicit_tag_and_digest(self):
        digest = "sha256:" + "a" * 64
        container = ray_container(head_pod(render_gpu({"image": {"repository": "registry.example/llm", "tag": "1.2.3", "digest": digest}})))
        assert container["image"] == f"registry.example/llm:1.2.3@{digest}"

    def test_pull_secrets(self):
        objects = render_gpu({"imagePullSecrets": ["regcred"]})
        assert head_pod(objects)["spec"]["imagePullSecrets"] == [{"name": "regcred"}]
        assert worker_group(objects, "l40s")["template"]["spec"]["imagePullSecrets"] == [{"name": "regcred"}]


class TestEnvironment:
    @pytest.mark.parametrize("enabled, value", [(True, "1"), (False, "0")])
    def test_fast_path_on_every_ray_container(self, enabled, value):
        objects = render_gpu({"fastPath": {"enabled": enabled}})
        for template in (head_pod(objects), worker_group(objects, "l40s")["template"]):
            variables = env(ray_container(template))
            assert {name: variables[name] for name in FAST_PATH} == dict.fromkeys(FAST_PATH, value)

    @pytest.mark.parametrize("values, seconds", [({}, "60"), ({"fastPath": {"clientIdleTimeoutSeconds": 300}}, "300")])
    def test_haproxy_client_idle_timeout_on_every_ray_container(self, values, seconds):
        """Issue 14 case 7: Ray's HAProxy holds an idle client for 3600 s unless told otherwise."""
        objects = render_gpu(values)
        for template in (head_pod(objects), worker_group(objects, "l40s")["template"]):
            assert env(ray_container(template))["RAY_SERVE_HAPROXY_TIMEOUT_CLIENT_S"] == seconds

    def test_secrets_only_by_reference(self):
        objects = render_gpu({"secretEnv": {"MILVUS_TOKEN": {"secretName": "milvus", "key": "token"}}})
        for template in (head_pod(objects), worker_group(objects, "l40s")["template"]):
            (item,) = [e for e in ray_container(template)["env"] if e["name"] == "MILVUS_TOKEN"]
            assert item == {"name": "MILVUS_TOKEN", "valueFrom": {"secretKeyRef": {"name": "milvus", "key": "token"}}}

    @pytest.mark.parametrize("name", ["HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"])
    def test_model_hub_tokens_reach_workers_only(self, name):
        """Issue 13 item 8: the head never loads weights, so it never gets the token."""
        objects = render_gpu({"secretEnv": {name: {"secretName": "hf-token", "key": "token", "workersOnly": False}}})
        assert name not in env(ray_container(head_pod(objects)))
        assert env(ray_container(worker_group(objects, "l40s")["template"]))[name] == {
            "secretKeyRef": {"name": "hf-token", "key": "token"}
        }

    def test_a_secret_can_be_scoped_to_workers(self):
        objects = render_gpu({"secretEnv": {"S3_KEY": {"secretName": "s3", "key": "k", "workersOnly": True}}})
        assert "S3_KEY" not in env(ray_container(head_pod(objects)))
        assert "S3_KEY" in env(ray_container(worker_group(objects, "l40s")["template"]))

    @pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.stem)
    def test_no_profile_puts_hf_token_on_the_head(self, profile):
        assert "HF_TOKEN" not in env(ray_container(head_pod(render_chart(values_files=[profile]))))

    def test_optional_secret(self):
        variables = env(ray_container(head_pod(render_gpu({"secretEnv": {"X": {"secretName": "s", "key": "k", "optional": True}}}))))
        assert variables["X"] == {"secretKeyRef": {"name": "s", "key": "k", "optional": True}}

    def test_plain_settings_are_strings(self):
        variables = env(ray_container(head_pod(render_gpu({"extraEnv": {"VLLM_LOGGING_LEVEL": "DEBUG", "NCCL_P2P_DISABLE": 1}}))))
        assert variables["VLLM_LOGGING_LEVEL"] == "DEBUG"
        assert variables["NCCL_P2P_DISABLE"] == "1"


class TestVolumes:
    def test_api_keys_mounted_read_only_in_every_ray_pod(self):
        objects = render_gpu({"apiKeys": {"existingSecret": "tenant-keys", "key": "keys.json"}})
        for template in (head_pod(objects), worker_group(objects, "l40s")["template"]):
            mount = mounts(ray_container(template))["/etc/llm-serving/api-keys"]
            assert mount["readOnly"] is True
            secret = volumes(template)[mount["name"]]["secret"]
            assert secret["secretName"] == "tenant-keys"
            assert secret["items"] == [{"key": "keys.json", "path": "keys.json"}]

    def test_no_keys_volume_without_a_secret(self):
        objects = render_cpu()
        assert "api-keys" not in volumes(head_pod(objects))

    def test_model_cache_default_is_an_empty_dir_on_workers(self):
        pod = worker_group(render_gpu({"modelCache": {"emptyDir": {"sizeLimit": "200Gi"}}}), "l40s")["template"]
        assert volumes(pod)["model-cache"]["emptyDir"] == {"sizeLimit": "200Gi"}
        container = ray_container(pod)
        assert mounts(container)["/models"]["name"] == "model-cache"
        assert env(container)["HF_HOME"] == "/models/huggingface"
        assert env(container)["LLM_SERVING_CACHE"] == "/models/llm-serving"

    def test_model_cache_on_an_existing_claim(self):
        objects = render_gpu({"modelCache": {"type": "pvc", "mountPath": "/cache", "pvc": {"existingClaim": "weights"}}})
        pod = worker_group(objects, "l40s")["template"]
        assert volumes(pod)["model-cache"]["persistentVolumeClaim"] == {"claimName": "weights"}
        assert env(ray_container(pod))["HF_HOME"] == "/cache/huggingface"
        assert not render.by_kind(objects, "PersistentVolumeClaim")

    def test_model_cache_on_the_node(self):
        pod = worker_group(render_gpu({"modelCache": {"type": "hostPath"}}), "l40s")["template"]
        assert volumes(pod)["model-cache"]["hostPath"] == {"path": "/mnt/llm-serving/models", "type": "DirectoryOrCreate"}


def quantity_bytes(quantity: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
    for unit, factor in units.items():
        if quantity.endswith(unit):
            return int(quantity[: -len(unit)]) * factor
    return int(quantity)


def ray_pods(objects):
    """(rayStartParams, pod template) of the head and of every worker group."""
    spec = cluster(objects)
    groups = [spec["headGroupSpec"]] + spec.get("workerGroupSpecs", [])
    return [(group["rayStartParams"], group["template"]) for group in groups]


class TestObjectStore:
    """Issue 13 item 3: Ray's object store stays in /dev/shm (tests/unit/test_config.py shows Ray's
    own default, 30% of the memory, outgrowing it)."""

    @pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.stem)
    def test_every_pod_of_every_profile_keeps_its_object_store_in_dev_shm(self, profile):
        for params, template in ray_pods(render_chart(values_files=[profile])):
            shm = quantity_bytes(volumes(template)["shared-mem"]["emptyDir"]["sizeLimit"])
            assert "object-store-memory" in params, "without it Ray takes 30% of the memory, more than /dev/shm"
            assert 75 * 2**20 <= int(params["object-store-memory"]) <= shm
            limit = ray_container(template)["resources"]["limits"]["memory"]
            assert shm < quantity_bytes(limit)

    def test_eighty_percent_of_the_groups_dev_shm(self):
        objects = render_gpu({"workerGroups": {"l40s": {"sharedMemorySizeLimit": "1500Mi"}}, "head": {"sharedMemorySizeLimit": "1.5Gi"}})
        assert worker_group(objects, "l40s")["rayStartParams"]["object-store-memory"] == str(1500 * 2**20 * 4 // 5)
        assert cluster(objects)["headGroupSpec"]["rayStartParams"]["object-store-memory"] == str(int(1.5 * GIB * 0.8))

    def test_a_set_value_is_kept(self):
        objects = render_gpu({"workerGroups": {"l40s": {"rayStartParams": {"object-store-memory": "1000000000"}}}})
        assert worker_group(objects, "l40s")["rayStartParams"] == {"object-store-memory": "1000000000"}

    def test_a_store_larger_than_dev_shm_is_refused(self):
        message = helm_error(merged(GPU_VALUES, {"workerGroups": {"l40s": {"rayStartParams": {"object-store-memory": str(9 * GIB)}}}}))
        assert "workerGroups.l40s.rayStartParams.object-store-memory (9663676416 bytes) is larger than the pod's /dev/shm (sharedMemory.sizeLimit = 8Gi" in message

    def test_dev_shm_must_be_below_the_memory_limit(self):
        message = helm_error(merged(GPU_VALUES, {"workerGroups": {"l40s": {"sharedMemorySizeLimit": "28Gi"}}}))
        assert "workerGroups.l40s.sharedMemorySizeLimit = 28Gi is not below workerGroups.l40s.resources.limits.memory (28Gi)" in message
        message = helm_error(merged(GPU_VALUES, {"head": {"sharedMemorySizeLimit": "8Gi"}}))
        assert "head.sharedMemorySizeLimit = 8Gi is not below head.resources.limits.memory (8Gi)" in message

    def test_dev_shm_too_small_for_rays_minimum(self):
        message = helm_error(merged(GPU_VALUES, {"head": {"sharedMemorySizeLimit": "64Mi"}}))
        assert "head gets a Ray object store of 53687091 bytes from head.sharedMemorySizeLimit = 64Mi" in message


TWO_GPU_GROUPS = merged(
    GPU_VALUES,
    {
        "app": {
            "models": {
                "chat": {"worker_group": "l40s"},
                "big": {"source": "org/big-70b", "accelerator_type": "L40S", "tensor_parallel_size": 4, "worker_group": "l40s-4x"},
            }
        },
        "workerGroups": {"l40s-4x": {"gpus": 4, "acceleratorType": "L40S", "nodePool": "gpu-l40s", "maxReplicas": 1}},
    },
)


class TestWorkerGroupTie:
    """Issue 13 item 2: with two GPU groups every GPU model names its group."""

    def test_tied_models_render_and_each_group_advertises_itself(self):
        objects = render_chart(TWO_GPU_GROUPS)
        assert worker_group(objects, "l40s-4x")["resources"] == {"accelerator_type:L40S": "1", "llm-serving-group:l40s-4x": "1"}
        assert app_args(objects)["models"]["big"]["worker_group"] == "l40s-4x"

    def test_a_gpu_group_without_accelerator_type_still_advertises_itself(self):
        objects = render_gpu({"workerGroups": {"l40s": {"acceleratorType": None}}, "app": {"models": {"chat": {"accelerator_type": None}}}})
        assert worker_group(objects, "l40s")["resources"] == {"llm-serving-group:l40s": "1"}

    def test_a_model_must_name_its_group_when_there_are_two(self):
        values = merged(TWO_GPU_GROUPS, {"app": {"models": {"chat": {"worker_group": None}}}})
        message = helm_error(values)
        assert "app.models.chat.worker_group is not set, but there are 2 GPU worker groups (l40s, l40s-4x)" in message

    def test_an_unknown_group_is_refused(self):
        message = helm_error(merged(TWO_GPU_GROUPS, {"app": {"models": {"chat": {"worker_group": "l4"}}}}))
        assert 'app.models.chat.worker_group is "l4", but that is not a worker group with gpus > 0 (GPU worker groups: l40s, l40s-4x)' in message

    def test_a_group_too_small_for_the_model_is_refused(self):
        message = helm_error(merged(TWO_GPU_GROUPS, {"app": {"models": {"big": {"worker_group": "l40s"}}}}))
        assert 'app.models.big.worker_group is "l40s", whose pods have 1 GPU(s), but the model needs 4' in message

    def test_an_accelerator_mismatch_is_refused(self):
        values = merged(TWO_GPU_GROUPS, {"workerGroups": {"l40s": {"acceleratorType": "L4"}}, "app": {"models": {"chat": {"accelerator_type": "L4"}}}})
        values = merged(values, {"app": {"models": {"chat": {"worker_group": "l40s-4x"}}}})
        assert 'whose acceleratorType is "L40S", but the model asks for accelerator_type L4' in helm_error(values)

    def test_cpu_models_name_no_group(self):
        message = helm_error(merged(CPU_VALUES, {"app": {"models": {"tiny": {"worker_group": "cpu"}}}}))
        assert "app.models.tiny.worker_group applies to GPU models" in message

    def test_a_gpu_group_may_not_set_resource_start_params(self):
        values = merged(GPU_VALUES, {"workerGroups": {"l40s": {"acceleratorType": None, "rayStartParams": {"num-cpus": "4"}}}})
        values = merged(values, {"app": {"models": {"chat": {"accelerator_type": None}}}})
        assert "workerGroups.l40s sets gpus and rayStartParams.num-cpus; KubeRay rejects" in helm_error(values)


def test_cpu_values_are_complete():
    # The helpers' minimal CPU install renders as it stands (guards the fixtures above).
    assert app_args(render_cpu()) == CPU_VALUES["app"]
