"""The optional objects (ServiceAccount, PDB, NetworkPolicy, Ingress, HTTPRoute, PVC), the helm test
pod and NOTES.txt. Routes point at the Service KubeRay creates for the serving cluster."""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.charts import render
from tests.charts.llm_serving_chart import CHART_DIR, GPU_VALUES, merged, render_cpu, render_gpu

HTTP_ROUTE_API = "gateway.networking.k8s.io/v1/HTTPRoute"


def test_defaults_render_only_the_rayservice_service_account_and_test_pod():
    kinds = sorted(obj["kind"] for obj in render_gpu())
    assert kinds == ["Pod", "RayService", "ServiceAccount"]


class TestServiceAccount:
    def test_created_with_annotations_and_no_token(self):
        account = render.one(
            render_gpu({"serviceAccount": {"annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::1:role/llm"}}}),
            "ServiceAccount",
        )
        assert account["metadata"]["name"] == "test-llm-serving"
        assert account["metadata"]["annotations"] == {"eks.amazonaws.com/role-arn": "arn:aws:iam::1:role/llm"}
        assert account["automountServiceAccountToken"] is False

    def test_existing_account(self):
        objects = render_gpu({"serviceAccount": {"create": False, "name": "shared"}})
        assert not render.by_kind(objects, "ServiceAccount")
        head = render.one(objects, "RayService")["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]
        assert head["spec"]["serviceAccountName"] == "shared"


class TestPodDisruptionBudget:
    def test_protects_the_head_of_every_cluster_of_this_rayservice(self):
        pdb = render.one(render_gpu({"podDisruptionBudget": {"enabled": True}}), "PodDisruptionBudget")
        assert pdb["spec"]["minAvailable"] == 1
        assert "maxUnavailable" not in pdb["spec"]
        assert pdb["spec"]["selector"]["matchLabels"] == {
            "app.kubernetes.io/instance": "test",
            "app.kubernetes.io/part-of": "llm-serving",
            "ray.io/node-type": "head",
        }


class TestNetworkPolicy:
    def policy(self, override=None):
        return render.one(render_gpu(merged({"networkPolicy": {"enabled": True}}, override)), "NetworkPolicy")

    def test_selects_all_ray_pods_and_restricts_ingress_only(self):
        policy = self.policy()
        assert policy["spec"]["podSelector"]["matchLabels"] == {
            "app.kubernetes.io/instance": "test",
            "app.kubernetes.io/part-of": "llm-serving",
        }
        assert policy["spec"]["policyTypes"] == ["Ingress"]

    def test_rules(self):
        peers = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "apps"}}}]
        monitoring = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
        rules = self.policy({"networkPolicy": {"serveFrom": peers, "metricsFrom": monitoring}})["spec"]["ingress"]
        ray_peers, operator, serve, metrics = rules
        ray_pods = {"app.kubernetes.io/instance": "test", "app.kubernetes.io/part-of": "llm-serving"}
        # Every port but the dashboard's (tests/charts/test_llm_serving_dashboard.py).
        assert ray_peers["from"] == [{"podSelector": {"matchLabels": ray_pods}}]
        assert {"port": 8266, "endPort": 65535, "protocol": "TCP"} in ray_peers["ports"]
        assert operator["ports"] == [{"port": 8265, "protocol": "TCP"}]
        assert operator["from"] == [
            {"namespaceSelector": {}, "podSelector": {"matchLabels": {"app.kubernetes.io/name": "kuberay-operator"}}},
            {"podSelector": {"matchLabels": {**ray_pods, "ray.io/node-type": "head"}}},
        ]
        test_pod = {"podSelector": {"matchLabels": {"app.kubernetes.io/instance": "test", "app.kubernetes.io/component": "test"}}}
        assert serve == {"ports": [{"port": 8000, "protocol": "TCP"}], "from": peers + [test_pod]}
        without_tests = self.policy({"networkPolicy": {"serveFrom": peers}, "tests": {"enabled": False}})["spec"]["ingress"]
        assert without_tests[2]["from"] == peers
        assert metrics == {"ports": [{"port": 8080, "protocol": "TCP"}], "from": monitoring}

    def test_serve_port_open_to_all_and_no_metrics_rule_by_default(self):
        rules = self.policy({"networkPolicy": {"operator": {"namespaceSelector": {"kubernetes.io/metadata.name": "kuberay"}}}})["spec"]["ingress"]
        assert len(rules) == 3
        assert rules[1]["from"][0]["namespaceSelector"] == {"matchLabels": {"kubernetes.io/metadata.name": "kuberay"}}
        assert rules[2] == {"ports": [{"port": 8000, "protocol": "TCP"}]}


class TestRoutes:
    def test_ingress_to_the_serve_service(self):
        ingress = render.one(
            render_gpu({"ingress": {"enabled": True, "className": "nginx", "hosts": ["llm.example.com"],
                                    "tls": [{"secretName": "llm-tls", "hosts": ["llm.example.com"]}],
                                    "annotations": {"nginx.ingress.kubernetes.io/proxy-read-timeout": "600"}}}),
            "Ingress",
        )
        assert ingress["spec"]["ingressClassName"] == "nginx"
        assert ingress["spec"]["tls"] == [{"secretName": "llm-tls", "hosts": ["llm.example.com"]}]
        (rule,) = ingress["spec"]["rules"]
        assert rule["host"] == "llm.example.com"
        (path,) = rule["http"]["paths"]
        assert path["path"] == "/" and path["pathType"] == "Prefix"
        assert path["backend"]["service"] == {"name": "test-llm-serving-serve-svc", "port": {"number": 8000}}

    def test_http_route_to_the_serve_service(self):
        route = render.one(
            render_gpu(
                {"httpRoute": {"enabled": True, "parentRefs": [{"name": "public", "namespace": "gateways", "sectionName": "https"}],
                               "hostnames": ["llm.example.com"], "requestTimeout": "600s"}},
                api_versions=[HTTP_ROUTE_API],
            ),
            "HTTPRoute",
        )
        assert route["spec"]["parentRefs"] == [{"name": "public", "namespace": "gateways", "sectionName": "https"}]
        assert route["spec"]["hostnames"] == ["llm.example.com"]
        (rule,) = route["spec"]["rules"]
        assert rule["matches"] == [{"path": {"type": "PathPrefix", "value": "/"}}]
        assert rule["backendRefs"] == [{"name": "test-llm-serving-serve-svc", "port": 8000}]
        assert rule["timeouts"] == {"request": "600s"}

    def test_http_route_offline_with_the_capabilities_override(self):
        objects = render_gpu({"httpRoute": {"enabled": True, "parentRefs": [{"name": "gw"}], "skipCapabilitiesCheck": True}})
        assert "timeouts" not in render.one(objects, "HTTPRoute")["spec"]["rules"][0]


class TestModelCacheClaim:
    def test_created_claim_is_kept_on_uninstall(self):
        objects = render_gpu({"modelCache": {"type": "pvc", "pvc": {"create": True, "storageClassName": "efs", "size": "1Ti"}}})
        claim = render.one(objects, "PersistentVolumeClaim")
        assert claim["metadata"]["name"] == "test-llm-serving-model-cache"
        assert claim["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
        assert claim["spec"] == {"accessModes": ["ReadWriteMany"], "storageClassName": "efs", "resources": {"requests": {"storage": "1Ti"}}}
        worker = render.one(objects, "RayService")["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]
        cache = [v for v in worker["spec"]["volumes"] if v["name"] == "model-cache"][0]
        assert cache["persistentVolumeClaim"] == {"claimName": "test-llm-serving-model-cache"}


class TestHelmTestPod:
    def pod(self, objects):
        return render.one(objects, "Pod")

    def test_waits_for_readiness_through_the_serve_service(self):
        pod = self.pod(render_gpu({"tests": {"timeoutSeconds": 600}}))
        assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
        (container,) = pod["spec"]["containers"]
        variables = {item["name"]: item["value"] for item in container["env"]}
        assert variables == {"ENDPOINT": "http://test-llm-serving-serve-svc:8000", "TIMEOUT_SECONDS": "600", "EXPECT_AUTH": "true"}
        assert "/readyz" in container["args"][0] and "/v1/models" in container["args"][0]
        assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
        assert pod["spec"]["nodeSelector"] == {"llm-serving.io/node-pool": "cpu"}

    def test_expects_open_access_without_auth(self):
        (container,) = self.pod(render_cpu())["spec"]["containers"]
        assert {"name": "EXPECT_AUTH", "value": "false"} in container["env"]

    def test_the_check_script_is_valid_python(self):
        (container,) = self.pod(render_gpu())["spec"]["containers"]
        compile(container["args"][0], "test-endpoint", "exec")

    def test_can_be_left_out(self):
        assert not render.by_kind(render_gpu({"tests": {"enabled": False}}), "Pod")


class TestNotes:
    """NOTES.txt rendered by the real helm: copied into a scratch chart as a ConfigMap via tpl."""

    def notes(self, tmp_path: Path, values, **kwargs) -> str:
        chart = tmp_path / "llm-serving"
        shutil.copytree(CHART_DIR, chart, symlinks=True)
        shutil.copy(chart / "templates" / "NOTES.txt", chart / "notes-under-test.txt")
        (chart / "templates" / "notes-under-test.yaml").write_text(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\n"
            'data:\n  notes: {{ tpl (.Files.Get "notes-under-test.txt") . | quote }}\n'
        )
        objects = render.render_chart(
            "llm-serving", values=values, chart_dir=chart, show_only=["templates/notes-under-test.yaml"], **kwargs
        )
        return render.one(objects, "ConfigMap")["data"]["notes"]

    def test_tells_how_to_reach_and_check_the_endpoint(self, tmp_path: Path):
        notes = self.notes(tmp_path, GPU_VALUES)
        assert "kubectl -n llm get rayservice test-llm-serving -w" in notes
        assert "kubectl -n llm port-forward svc/test-llm-serving-serve-svc 8000:8000" in notes
        assert "curl -s localhost:8000/readyz     # 503 until every model is loaded" in notes
        assert 'Authorization: Bearer $API_KEY' in notes
        assert "Keys come from Secret api-keys (key keys.yaml), mounted at /etc/llm-serving/api-keys/keys.yaml" in notes
        assert "helm test test -n llm" in notes
        assert "serving: chat" in notes

    def test_without_auth_and_with_routes(self, tmp_path: Path):
        values = merged(
            GPU_VALUES,
            {"apiKeys": {"existingSecret": ""}, "app": {"gateway": {"auth": {"mode": "none"}}},
             "ingress": {"enabled": True, "hosts": ["llm.example.com"]}},
        )
        notes = self.notes(tmp_path, values)
        assert "curl -s localhost:8000/v1/models\n" in notes
        assert "Bearer" not in notes
        assert "https://llm.example.com/" in notes


TEMPLATE_KINDS = {
    "rayservice.yaml": "RayService",
    "serviceaccount.yaml": "ServiceAccount",
    "pdb.yaml": "PodDisruptionBudget",
    "pvc.yaml": "PersistentVolumeClaim",
    "networkpolicy.yaml": "NetworkPolicy",
    "ingress.yaml": "Ingress",
    "httproute.yaml": "HTTPRoute",
    "dashboard-ingress.yaml": "Ingress",
    "dashboard-httproute.yaml": "HTTPRoute",
    "dashboard-validate.yaml": None,
    "tests/test-endpoint.yaml": "Pod",
    "validate.yaml": None,
    "extra-objects.yaml": None,  # extraObjects: whatever kinds the user lists
}


def test_one_resource_per_file_named_after_its_kind():
    templates = CHART_DIR / "templates"
    found = {str(path.relative_to(templates)) for path in templates.rglob("*.yaml")}
    assert found == set(TEMPLATE_KINDS), "a template was added or removed: list it in TEMPLATE_KINDS"
    for name, kind in TEMPLATE_KINDS.items():
        kinds = [line.split(":", 1)[1].strip() for line in (templates / name).read_text().splitlines() if line.startswith("kind:")]
        assert kinds == ([kind] if kind else []), f"{name} declares {kinds}"
