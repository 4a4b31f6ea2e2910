"""The Ray dashboard (head port 8265) of llm-serving: never exposed without an authentication layer,
and, with networkPolicy.enabled, reached only by the KubeRay operator, the head itself and the proxy
of the exposure (issue 13, item 10).

KubeRay keeps a head Service per RayService, `<RayService name>-head-svc` with port `dashboard` 8265
(v1.7.0: GenerateHeadServiceName in ray-operator/controllers/ray/utils/util.go,
BuildHeadServiceForRayService in ray-operator/controllers/ray/common/service.go).
"""

from __future__ import annotations

from typing import Any, Dict, List

import pytest
import yaml

from tests.charts import render
from tests.charts.llm_serving_chart import (
    CHART_DIR,
    GPU_VALUES,
    helm_error,
    merged,
    render_gpu,
)

HTTP_ROUTE_API = "gateway.networking.k8s.io/v1/HTTPRoute"
HEAD_SERVICE = {"name": "test-llm-serving-head-svc", "port": {"number": 8265}}
OAUTH2_PROXY = {
    "nginx.ingress.kubernetes.io/auth-url": "https://oauth2.example.com/oauth2/auth",
    "nginx.ingress.kubernetes.io/auth-signin": "https://oauth2.example.com/oauth2/start?rd=$escaped_request_uri",
}
INGRESS_NAMESPACE = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}]
RAY_PODS = {"app.kubernetes.io/instance": "test", "app.kubernetes.io/part-of": "llm-serving"}


def exposed(**expose: Any) -> Dict[str, Any]:
    return {"dashboard": {"expose": merged({"enabled": True, "hosts": ["ray.example.com"]}, expose)}}


def dashboard_rule(objects: List[Dict[str, Any]]) -> Dict[str, Any]:
    rules = render.one(objects, "NetworkPolicy")["spec"]["ingress"]
    (rule,) = [r for r in rules if r.get("ports") == [{"port": 8265, "protocol": "TCP"}]]
    return rule


class TestOffByDefault:
    def test_values(self):
        values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
        assert values["dashboard"]["expose"]["enabled"] is False
        assert values["dashboard"]["auth"] == {"annotations": {}, "externalAuth": ""}

    def test_nothing_routes_to_the_dashboard(self):
        objects = render_gpu()
        assert not render.by_kind(objects, "Ingress") and not render.by_kind(objects, "HTTPRoute")


class TestIngress:
    def test_to_the_head_service_with_the_auth_annotations(self):
        values = merged(exposed(className="nginx", tls=[{"secretName": "ray-tls", "hosts": ["ray.example.com"]}],
                                annotations={"nginx.ingress.kubernetes.io/proxy-read-timeout": "600"}),
                        {"dashboard": {"auth": {"annotations": OAUTH2_PROXY}}})
        ingress = render.one(render_gpu(values), "Ingress")
        assert ingress["metadata"]["name"] == "test-llm-serving-dashboard"
        assert ingress["metadata"]["labels"]["app.kubernetes.io/component"] == "dashboard"
        assert ingress["metadata"]["annotations"] == {**OAUTH2_PROXY, "nginx.ingress.kubernetes.io/proxy-read-timeout": "600"}
        assert ingress["spec"]["ingressClassName"] == "nginx"
        assert ingress["spec"]["tls"] == [{"secretName": "ray-tls", "hosts": ["ray.example.com"]}]
        (rule,) = ingress["spec"]["rules"]
        assert rule["host"] == "ray.example.com"
        (path,) = rule["http"]["paths"]
        assert path["path"] == "/" and path["backend"]["service"] == HEAD_SERVICE

    def test_an_expose_annotation_cannot_override_the_auth(self):
        values = merged(exposed(annotations={"nginx.ingress.kubernetes.io/auth-url": ""}),
                        {"dashboard": {"auth": {"annotations": OAUTH2_PROXY}}})
        annotations = render.one(render_gpu(values), "Ingress")["metadata"]["annotations"]
        assert annotations["nginx.ingress.kubernetes.io/auth-url"] == OAUTH2_PROXY["nginx.ingress.kubernetes.io/auth-url"]

    def test_external_auth_is_recorded(self):
        values = merged(exposed(), {"dashboard": {"auth": {"externalAuth": "corp-sso-proxy"}}})
        ingress = render.one(render_gpu(values), "Ingress")
        assert ingress["metadata"]["annotations"] == {"llm-serving.io/dashboard-auth": "corp-sso-proxy"}

    def test_the_serve_ingress_is_untouched(self):
        values = merged(exposed(), {"dashboard": {"auth": {"annotations": OAUTH2_PROXY}},
                                    "ingress": {"enabled": True, "hosts": ["llm.example.com"]}})
        names = sorted(i["metadata"]["name"] for i in render.by_kind(render_gpu(values), "Ingress"))
        assert names == ["test-llm-serving", "test-llm-serving-dashboard"]


class TestHttpRoute:
    ROUTE = {"kind": "httpRoute", "parentRefs": [{"name": "internal", "namespace": "gateways", "sectionName": "https"}]}

    def test_to_the_head_service(self):
        values = merged(exposed(**self.ROUTE), {"dashboard": {"auth": {"externalAuth": "envoy-gateway SecurityPolicy ray-dashboard-oidc"}}})
        route = render.one(render_gpu(values, api_versions=[HTTP_ROUTE_API]), "HTTPRoute")
        assert route["metadata"]["name"] == "test-llm-serving-dashboard"
        assert route["metadata"]["annotations"] == {"llm-serving.io/dashboard-auth": "envoy-gateway SecurityPolicy ray-dashboard-oidc"}
        assert route["spec"]["parentRefs"] == self.ROUTE["parentRefs"]
        assert route["spec"]["hostnames"] == ["ray.example.com"]
        (rule,) = route["spec"]["rules"]
        assert rule["backendRefs"] == [{"name": "test-llm-serving-head-svc", "port": 8265}]
        assert not render.by_kind(render_gpu(values, api_versions=[HTTP_ROUTE_API]), "Ingress")

    def test_offline_with_the_capabilities_override(self):
        values = merged(exposed(skipCapabilitiesCheck=True, **self.ROUTE), {"dashboard": {"auth": {"externalAuth": "sso"}}})
        assert render.one(render_gpu(values), "HTTPRoute")


class TestRefusedWithoutAuth:
    @pytest.mark.parametrize(
        "values, message",
        [
            (exposed(), "Set dashboard.auth.annotations to the ingress controller's auth annotations"),
            (exposed(), "or dashboard.auth.externalAuth"),
            (exposed(kind="httpRoute", parentRefs=[{"name": "gw"}]), "without authentication. Set dashboard.auth.externalAuth"),
            (merged(exposed(kind="httpRoute", parentRefs=[{"name": "gw"}]), {"dashboard": {"auth": {"annotations": OAUTH2_PROXY}}}),
             "do not authenticate an HTTPRoute"),
            (merged(exposed(kind="httpRoute"), {"dashboard": {"auth": {"externalAuth": "sso"}}}), "dashboard.expose.parentRefs is empty"),
            (merged(exposed(hosts=[]), {"dashboard": {"auth": {"annotations": OAUTH2_PROXY}}}), "needs dashboard.expose.hosts"),
            (merged(exposed(), {"dashboard": {"auth": {"annotations": OAUTH2_PROXY}}, "networkPolicy": {"enabled": True}}),
             "List the ingress controller's or Gateway's pods in dashboard.expose.from"),
            (exposed(kind="nodePort"), "dashboard/expose/kind"),
            ({"dashboard": {"expose": {"enable": True}}}, "additional properties 'enable' not allowed"),
        ],
    )
    def test_fails_naming_the_values_to_set(self, values, message):
        assert message in helm_error(merged(GPU_VALUES, values), api_versions=[HTTP_ROUTE_API])


class TestNetworkPolicy:
    def policy_rules(self, override: Dict[str, Any] | None = None) -> List[Dict[str, Any]]:
        objects = render_gpu(merged({"networkPolicy": {"enabled": True}}, override))
        return render.one(objects, "NetworkPolicy")["spec"]["ingress"]

    def test_ray_pods_reach_every_port_but_the_dashboard(self):
        ray_peers = self.policy_rules()[0]
        assert ray_peers["from"] == [{"podSelector": {"matchLabels": RAY_PODS}}]
        assert ray_peers["ports"] == [
            {"port": 1, "endPort": 8264, "protocol": "TCP"},
            {"port": 8266, "endPort": 65535, "protocol": "TCP"},
            {"port": 1, "endPort": 65535, "protocol": "UDP"},
        ]

    def test_only_the_operator_and_the_head_reach_the_dashboard(self):
        rule = dashboard_rule(render_gpu({"networkPolicy": {"enabled": True}}))
        assert rule["from"] == [
            {"namespaceSelector": {}, "podSelector": {"matchLabels": {"app.kubernetes.io/name": "kuberay-operator"}}},
            {"podSelector": {"matchLabels": {**RAY_PODS, "ray.io/node-type": "head"}}},
        ]
        # No other rule opens 8265 (every rule names its ports).
        others = [r for r in self.policy_rules() if r != rule]
        assert all(r.get("ports") for r in others)
        assert not [p for r in others for p in r["ports"] if p["protocol"] == "TCP" and p["port"] <= 8265 <= p.get("endPort", p["port"])]

    def test_the_exposures_proxy_too_when_exposed(self):
        values = merged(exposed(**{"from": INGRESS_NAMESPACE}),
                        {"dashboard": {"auth": {"annotations": OAUTH2_PROXY}}, "networkPolicy": {"enabled": True}})
        rule = dashboard_rule(render_gpu(values))
        assert rule["from"][2:] == INGRESS_NAMESPACE
        assert len(rule["from"]) == 3

    def test_from_is_ignored_while_not_exposed(self):
        values = {"dashboard": {"expose": {"from": INGRESS_NAMESPACE}}, "networkPolicy": {"enabled": True}}
        assert len(dashboard_rule(render_gpu(values))["from"]) == 2
