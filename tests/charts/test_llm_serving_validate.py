"""Bad values fail at `helm template` with a message that names the key (and, for cross-field rules
in templates/validate.yaml, the fix). Assertions are on helm's own error text, what a user sees."""

from __future__ import annotations

import pytest

from tests.charts.llm_serving_chart import CPU_VALUES, GPU_VALUES, helm_error, merged, render_chart, render_cpu

SCHEMA_ERROR = "values don't meet the specifications of the schema(s)"


class TestSchema:
    """values.schema.json: typos, wrong types and values outside enums or bounds."""

    @pytest.mark.parametrize(
        "override, location, detail",
        [
            ({"workerGroups": {"l40s": {"gpu": 1}}}, "/workerGroups/l40s", "additional properties 'gpu' not allowed"),
            ({"imag": {"tag": "x"}}, "", "additional properties 'imag' not allowed"),
            ({"head": {"nodeSelectr": {}}}, "/head", "additional properties 'nodeSelectr' not allowed"),
            ({"upgradeStrategy": {"type": "BlueGreen"}}, "/upgradeStrategy/type", "value must be one of"),
            ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy", "value must be one of"),
            ({"image": {"digest": "latest"}}, "/image/digest", "does not match pattern"),
            ({"workerGroups": {"l40s": {"gpus": "one"}}}, "/workerGroups/l40s/gpus", "got string, want integer"),
            ({"workerGroups": {"l40s": {"gpus": -1}}}, "/workerGroups/l40s/gpus", "minimum"),
            ({"workerGroups": {"GPU_big": {"maxReplicas": 1}}}, "/workerGroups", "additional properties 'GPU_big'"),
            ({"workerGroups": {"l40s": {"maxReplicas": None}}}, "/workerGroups/l40s", "missing property 'maxReplicas'"),
            ({"head": {"rayStartParams": {"num-cpus": 0}}}, "/head/rayStartParams/num-cpus", "got number, want string"),
            ({"head": {"sharedMemorySizeLimit": "2 GB"}}, "/head/sharedMemorySizeLimit", "does not match pattern"),
            ({"secretEnv": {"HF_TOKEN": {"secretName": "hf"}}}, "/secretEnv/HF_TOKEN", "missing property 'key'"),
            ({"secretEnv": {"HF_TOKEN": "hf_abc"}}, "/secretEnv/HF_TOKEN", "got string, want object"),
            ({"extraEnv": {"1BAD": "x"}}, "/extraEnv", "additional properties '1BAD' not allowed"),
            ({"modelCache": {"type": "s3"}}, "/modelCache/type", "value must be one of"),
            ({"initializingTimeout": "forever"}, "/initializingTimeout", "does not match pattern"),
            ({"fullnameOverride": "x" * 54}, "/fullnameOverride", "maxLength"),
            ({"upgradeStrategy": {"clusterUpgradeOptions": {"maxSurgePercent": 150}}}, "/upgradeStrategy/clusterUpgradeOptions/maxSurgePercent", "maximum"),
            ({"autoscaler": {"version": "v3"}}, "/autoscaler/version", "value must be one of"),
            ({"rayVersion": "latest"}, "/rayVersion", "does not match pattern"),
        ],
    )
    def test_chart_keys(self, override, location, detail):
        message = helm_error(merged(GPU_VALUES, override))
        assert SCHEMA_ERROR in message
        assert f"at '{location}'" in message, message
        assert detail in message, message

    @pytest.mark.parametrize(
        "model_override, location, detail",
        [
            ({"tensor_parallel_sise": 2}, "/app/models/chat", "additional properties 'tensor_parallel_sise' not allowed"),
            ({"task": "chat"}, "/app/models/chat/task", "value must be one of 'generate', 'embed'"),
            ({"device": "tpu"}, "/app/models/chat/device", "value must be one of 'gpu', 'cpu'"),
            ({"tensor_parallel_size": 0}, "/app/models/chat/tensor_parallel_size", "minimum"),
            ({"max_model_len": "long"}, "/app/models/chat/max_model_len", "want integer"),
            ({"autoscaling": {"min_replica": 0}}, "/app/models/chat/autoscaling", "additional properties 'min_replica'"),
            ({"autoscaling": {"target_ongoing_requests": 0}}, "/app/models/chat/autoscaling/target_ongoing_requests", "exclusiveMinimum"),
            ({"source": ""}, "/app/models/chat/source", "minLength"),
        ],
    )
    def test_app_keys_are_checked_with_the_apps_own_rules(self, model_override, location, detail):
        message = helm_error(merged(GPU_VALUES, {"app": {"models": {"chat": model_override}}}))
        assert SCHEMA_ERROR in message
        assert f"at '{location}'" in message, message
        assert detail in message, message

    def test_unknown_gateway_key(self):
        message = helm_error(merged(GPU_VALUES, {"app": {"gateway": {"cors": ["*"]}}}))
        assert "at '/app/gateway': additional properties 'cors' not allowed" in message

    def test_model_names_follow_the_apps_rule(self):
        values = merged(GPU_VALUES, {"app": {"models": {"bad name!": {"source": "org/x"}}}})
        assert "at '/app/models': additional properties 'bad name!' not allowed" in helm_error(values)

    def test_the_chart_has_no_default_model(self):
        assert "at '/app': missing property 'models'" in helm_error({})

    def test_an_empty_model_map_is_rejected(self):
        values = merged(GPU_VALUES, {"app": {"models": None}})
        values["app"]["models"] = {}
        assert "at '/app/models': minProperties" in helm_error(values)


class TestValidateTemplate:
    """templates/validate.yaml: rules across keys; each message says what to change."""

    def test_tensor_parallel_size_must_fit_a_worker_group(self):
        message = helm_error(merged(GPU_VALUES, {"app": {"models": {"chat": {"tensor_parallel_size": 4}}}}))
        assert "app.models.chat needs 4 L40S GPU(s) on one node (tensor_parallel_size: 4, accelerator_type: L40S)" in message
        assert "l40s: gpus=1 acceleratorType=L40S maxReplicas=2" in message
        assert "workerGroups.l40s-4x: {gpus: 4, acceleratorType: L40S" in message

    def test_tensor_parallel_size_without_an_accelerator_type(self):
        values = merged(GPU_VALUES, {"app": {"models": {"chat": {"accelerator_type": None, "tensor_parallel_size": 2}}}})
        message = helm_error(values)
        assert "app.models.chat needs 2 GPU(s) on one node (tensor_parallel_size: 2)" in message
        assert "workerGroups.gpu-2x: {gpus: 2" in message

    def test_accelerator_type_must_match_a_group(self):
        message = helm_error(merged(GPU_VALUES, {"app": {"models": {"chat": {"accelerator_type": "H100"}}}}))
        assert "app.models.chat needs 1 H100 GPU(s) on one node" in message
        assert "acceleratorType: H100" in message

    def test_a_group_that_cannot_start_pods_does_not_count(self):
        message = helm_error(merged(GPU_VALUES, {"workerGroups": {"l40s": {"maxReplicas": 0}}}))
        assert "no worker group can start a pod" in message

    def test_a_larger_group_fits_a_smaller_model(self):
        values = merged(GPU_VALUES, {"workerGroups": {"l40s": {"gpus": 8}}, "app": {"models": {"chat": {"tensor_parallel_size": 4}}}})
        assert render_chart(values)

    def test_cpu_models_need_no_gpu_group(self):
        assert render_cpu()

    def test_mixed_devices(self):
        values = merged(GPU_VALUES, {"app": {"models": {"embed": {"source": "org/e", "device": "cpu", "task": "embed"}}}})
        assert "app.models mixes `device: cpu` and `device: gpu`" in helm_error(values)

    def test_nowhere_to_run_replicas(self):
        values = merged(CPU_VALUES, {"workerGroups": None})
        assert "no worker group can start a pod" in helm_error(values)

    def test_head_that_takes_replicas_is_enough_for_cpu_models(self):
        values = merged(CPU_VALUES, {"workerGroups": None, "head": {"rayStartParams": {"num-cpus": "8"}}})
        assert render_chart(values)

    def test_min_above_max(self):
        message = helm_error(merged(GPU_VALUES, {"workerGroups": {"l40s": {"minReplicas": 3}}}))
        assert "workerGroups.l40s.minReplicas (3) is greater than maxReplicas (2)" in message

    def test_without_autoscaler_a_group_at_zero_never_starts(self):
        message = helm_error(merged(GPU_VALUES, {"autoscaler": {"enabled": False}}))
        assert "workerGroups.l40s.minReplicas is 0 and autoscaler.enabled is false" in message

    def test_gpu_count_comes_from_gpus_only(self):
        values = merged(GPU_VALUES, {"workerGroups": {"l40s": {"resources": {"limits": {"nvidia.com/gpu": 2}}}}})
        assert "workerGroups.l40s.resources.limits sets nvidia.com/gpu; set workerGroups.l40s.gpus instead" in helm_error(values)

    def test_accelerator_type_conflicts_with_resource_start_params(self):
        values = merged(GPU_VALUES, {"workerGroups": {"l40s": {"rayStartParams": {"num-gpus": "1"}}}})
        assert "workerGroups.l40s sets acceleratorType and rayStartParams.num-gpus" in helm_error(values)

    def test_group_idle_timeout_needs_autoscaler_v2(self):
        values = merged(GPU_VALUES, {"autoscaler": {"version": "v1"}, "workerGroups": {"l40s": {"idleTimeoutSeconds": 30}}})
        assert "workerGroups.l40s.idleTimeoutSeconds needs the v2 autoscaler" in helm_error(values)

    def test_keys_secret_with_auth_off(self):
        values = merged(GPU_VALUES, {"app": {"gateway": {"auth": {"mode": "none"}}}})
        assert "apiKeys.existingSecret is set but app.gateway.auth.mode is none" in helm_error(values)

    def test_keys_file_elsewhere_than_the_mount(self):
        values = merged(GPU_VALUES, {"app": {"gateway": {"auth": {"api_keys": {"file": "/keys/k.yaml"}}}}})
        message = helm_error(values)
        assert 'app.gateway.auth.api_keys.file is "/keys/k.yaml" but the chart mounts apiKeys.existingSecret at /etc/llm-serving/api-keys/keys.yaml' in message

    def test_api_key_auth_without_keys(self):
        message = helm_error(merged(GPU_VALUES, {"apiKeys": {"existingSecret": ""}}))
        assert "app.gateway.auth.mode is api_key (the app's default) but no keys are configured; set apiKeys.existingSecret" in message

    @pytest.mark.parametrize("name", ["HF_TOKEN", "OPENAI_API_KEY", "AWS_SECRET_ACCESS_KEY", "DB_PASSWORD", "Aws_Access_Key_Id"])
    def test_credentials_never_as_plain_values(self, name):
        message = helm_error(merged(GPU_VALUES, {"extraEnv": {name: "x"}}))
        assert f"extraEnv.{name} looks like a credential" in message
        assert f"secretEnv.{name}: {{secretName: <secret>, key: <key>}}" in message

    @pytest.mark.parametrize("source", ["extraEnv", "secretEnv"])
    def test_chart_managed_variables(self, source):
        value = "1" if source == "extraEnv" else {"secretName": "s", "key": "k"}
        message = helm_error(merged(GPU_VALUES, {source: {"RAY_SERVE_ENABLE_HA_PROXY": value}}))
        assert f"{source}.RAY_SERVE_ENABLE_HA_PROXY is set by the chart" in message

    def test_variable_in_both_env_maps(self):
        values = merged(GPU_VALUES, {"extraEnv": {"VLLM_X": "1"}, "secretEnv": {"VLLM_X": {"secretName": "s", "key": "k"}}})
        assert "VLLM_X is in both extraEnv and secretEnv" in helm_error(values)

    def test_incremental_upgrade_needs_a_gateway_class(self):
        values = merged(GPU_VALUES, {"upgradeStrategy": {"type": "NewClusterWithIncrementalUpgrade"}})
        assert "needs upgradeStrategy.clusterUpgradeOptions.gatewayClassName" in helm_error(values)

    def test_incremental_upgrade_step_within_surge(self):
        values = merged(
            GPU_VALUES,
            {
                "upgradeStrategy": {
                    "type": "NewClusterWithIncrementalUpgrade",
                    "clusterUpgradeOptions": {"gatewayClassName": "istio", "maxSurgePercent": 10, "stepSizePercent": 20},
                }
            },
        )
        assert "stepSizePercent (20) must not exceed maxSurgePercent (10)" in helm_error(values)

    def test_incremental_upgrade_needs_the_autoscaler(self):
        values = merged(
            GPU_VALUES,
            {
                "autoscaler": {"enabled": False},
                "workerGroups": {"l40s": {"minReplicas": 1}},
                "upgradeStrategy": {"type": "NewClusterWithIncrementalUpgrade", "clusterUpgradeOptions": {"gatewayClassName": "istio"}},
            },
        )
        assert "NewClusterWithIncrementalUpgrade needs the Ray autoscaler" in helm_error(values)

    def test_incremental_upgrade_routes_through_kuberays_gateway(self):
        values = merged(
            GPU_VALUES,
            {
                "ingress": {"enabled": True, "hosts": ["llm.example.com"]},
                "upgradeStrategy": {"type": "NewClusterWithIncrementalUpgrade", "clusterUpgradeOptions": {"gatewayClassName": "istio"}},
            },
        )
        message = helm_error(values)
        assert "KubeRay serves traffic through its own Gateway (test-llm-serving-gateway)" in message
        assert "test-llm-serving-serve-svc does not exist" in message

    def test_scale_to_zero_keeps_the_head_behind_the_service(self):
        values = merged(
            GPU_VALUES,
            {"excludeHeadPodFromServeSvc": True, "app": {"models": {"chat": {"autoscaling": {"min_replicas": 0}}}}},
        )
        assert "set excludeHeadPodFromServeSvc: false" in helm_error(values)

    def test_pvc_cache_needs_one_claim(self):
        assert "neither modelCache.pvc.existingClaim nor modelCache.pvc.create" in helm_error(
            merged(GPU_VALUES, {"modelCache": {"type": "pvc"}})
        )
        assert "sets both existingClaim and create: true" in helm_error(
            merged(GPU_VALUES, {"modelCache": {"type": "pvc", "pvc": {"existingClaim": "c", "create": True}}})
        )

    def test_a_local_batch_store_needs_one_pod_or_the_shared_cache_volume(self):
        batch = {"app": {"batch": {"store_uri": "/tmp/llm-serving/batch"}}}
        # GPU_VALUES: up to 2 worker pods, so the gateway and the BatchRunner may not share a disk.
        message = helm_error(merged(GPU_VALUES, batch))
        assert 'app.batch.store_uri "/tmp/llm-serving/batch" is a directory of one pod' in message
        assert "may run on 2 pods" in message and "e.g. /models/batch" in message
        shared_cache = {"modelCache": {"type": "pvc", "pvc": {"create": True}}}
        render_chart(merged(GPU_VALUES, merged(shared_cache, {"app": {"batch": {"store_uri": "/models/batch"}}})))
        render_chart(merged(GPU_VALUES, {"app": {"batch": {"store_uri": "s3://bucket/llm-batch"}}}))
        render_chart(merged(CPU_VALUES, batch))  # one worker pod, the head takes no replicas: one disk

    def test_ingress_needs_hosts(self):
        assert "ingress.hosts is empty" in helm_error(merged(GPU_VALUES, {"ingress": {"enabled": True}}))

    def test_http_route_needs_a_parent(self):
        assert "httpRoute.parentRefs is empty" in helm_error(merged(GPU_VALUES, {"httpRoute": {"enabled": True}}))

    def test_http_route_needs_the_gateway_api(self):
        values = merged(GPU_VALUES, {"httpRoute": {"enabled": True, "parentRefs": [{"name": "gw"}]}})
        message = helm_error(values)
        assert "does not serve gateway.networking.k8s.io/v1 HTTPRoute; install the Gateway API CRDs" in message

    def test_release_name_must_make_a_dns_1035_name(self):
        message = helm_error(GPU_VALUES, release="1st")
        assert 'the RayService name "1st-llm-serving" is not a DNS-1035 label' in message
