"""What every chart under charts/ shares: one helper naming scheme and `extraObjects`.

A new chart is picked up by the glob, so it is held to the same conventions from its first commit.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Dict, List

import pytest
import yaml

from tests.charts import render

CHARTS = sorted(path.parent.name for path in render.CHARTS.glob("*/Chart.yaml"))
DEFINE = re.compile(r'\{\{-?\s*define\s+"([^"]+)"')
INCLUDE = re.compile(r'\b(?:include|template)\s+"([^"]+)"')
# A helper's comment block right above its define; its first line must be the Usage line.
HELPER_DOC = re.compile(r'\{\{/\*\n((?:(?!\*/\}\}).)*?)\n\*/\}\}\n\{\{-?\s*define\s+"([^"]+)"', re.S)


def chart_dir(chart: str) -> Path:
    return render.CHARTS / chart


def templates(chart: str) -> Dict[str, str]:
    folder = chart_dir(chart) / "templates"
    return {str(path.relative_to(folder)): path.read_text() for path in sorted(folder.rglob("*")) if path.is_file()}


def base_values(chart: str) -> Path:
    """A CI scenario the chart renders with (default-values.yaml where the chart has one)."""
    ci = chart_dir(chart) / "ci"
    default = ci / "default-values.yaml"
    return default if default.exists() else sorted(ci.glob("*-values.yaml"))[0]


def chart_version(chart: str) -> str:
    return yaml.safe_load((chart_dir(chart) / "Chart.yaml").read_text())["version"]


def test_the_four_charts_are_covered():
    assert set(CHARTS) >= {"kuberay-operator", "karpenter-nodepools", "llm-monitoring", "llm-serving"}


@pytest.mark.parametrize("chart", CHARTS)
class TestHelperNames:
    def test_helpers_are_prefixed_with_the_chart_name(self, chart: str):
        defined = [name for text in templates(chart).values() for name in DEFINE.findall(text)]
        assert defined, f"{chart} defines no helpers"
        # Template names are global across subcharts: a helper without the chart prefix can collide.
        assert [name for name in defined if not name.startswith(f"{chart}.")] == []
        # `<chart>.chart.*` was the other scheme; `<chart>.chart` alone is the helm.sh/chart value.
        assert [name for name in defined if name.startswith(f"{chart}.chart.")] == []
        assert len(defined) == len(set(defined)), "a helper is defined twice"

    def test_the_base_helpers_exist(self, chart: str):
        defined = {name for text in templates(chart).values() for name in DEFINE.findall(text)}
        required = {f"{chart}.name", f"{chart}.chart", f"{chart}.labels"}
        if "fullnameOverride" in yaml.safe_load((chart_dir(chart) / "values.yaml").read_text()):
            required.add(f"{chart}.fullname")
        assert required - defined == set()

    def test_every_include_names_a_helper_of_this_chart(self, chart: str):
        defined = {name for text in templates(chart).values() for name in DEFINE.findall(text)}
        for template, text in templates(chart).items():
            for name in INCLUDE.findall(text):
                assert name in defined, f"{template} includes {name!r}, which {chart} does not define"

    def test_every_helper_starts_with_its_usage_line(self, chart: str):
        text = (chart_dir(chart) / "templates" / "_helpers.tpl").read_text()
        documented = {name: doc for doc, name in HELPER_DOC.findall(text)}
        for name in DEFINE.findall(text):
            assert name in documented, f"{name} has no comment block right above its define"
            first = documented[name].splitlines()[0]
            assert first.startswith("Usage: ") and f'"{name}"' in first, f"{name}: first comment line is {first!r}"

    def test_rendered_objects_carry_the_chart_labels(self, chart: str):
        objects = render.render_chart(chart, values_files=[base_values(chart)], release="rel")
        assert objects
        for obj in objects:
            labels = obj["metadata"].get("labels", {})
            where = f"{obj['kind']}/{obj['metadata']['name']}"
            assert labels.get("helm.sh/chart") == f"{chart}-{chart_version(chart)}", where
            assert labels.get("app.kubernetes.io/instance") == "rel", where
            assert labels.get("app.kubernetes.io/managed-by") == "Helm", where

    def test_selectors_never_take_common_labels(self, chart: str):
        objects = render.render_chart(
            chart, values_files=[base_values(chart)], values={"commonLabels": {"team": "serving"}}, release="rel"
        )
        for obj in objects:
            assert obj["metadata"]["labels"]["team"] == "serving", obj["kind"]
            spec = obj.get("spec") or {}
            for selector in (spec.get("selector"), (spec.get("selector") or {}).get("matchLabels")):
                if isinstance(selector, dict):
                    assert "team" not in selector, f"{obj['kind']}/{obj['metadata']['name']} selects on a user label"


# One map item and one string item, both templated; a chart helper works inside them.
def extra_objects(chart: str) -> List[Any]:
    return [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "{{ .Release.Name }}-extra"},
            "data": {"chart": f'{{{{ include "{chart}.name" . }}}}', "namespace": "{{ .Release.Namespace }}"},
        },
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {{ .Release.Name }}-from-string\nstringData:\n  token: from-a-string\n",
    ]


def schema_of(chart: str) -> Dict[str, Any]:
    return json.loads((chart_dir(chart) / "values.schema.json").read_text())


@pytest.mark.parametrize("chart", CHARTS)
class TestExtraObjects:
    def render(self, chart: str, items: List[Any]) -> List[Dict[str, Any]]:
        return render.render_chart(
            chart, values_files=[base_values(chart)], values={"extraObjects": items},
            show_only=["templates/extra-objects.yaml"], release="rel", namespace="ns",
        )

    def test_default_is_an_empty_list(self, chart: str):
        assert yaml.safe_load((chart_dir(chart) / "values.yaml").read_text())["extraObjects"] == []
        objects = render.render_chart(chart, values_files=[base_values(chart)], release="rel")
        assert not [obj for obj in objects if obj["metadata"]["name"].endswith("-extra")]

    def test_map_and_string_items_render_through_tpl(self, chart: str):
        objects = self.render(chart, extra_objects(chart))
        config_map = render.one(objects, "ConfigMap")
        assert config_map["metadata"]["name"] == "rel-extra"
        assert config_map["data"] == {"chart": chart, "namespace": "ns"}
        assert render.one(objects, "Secret")["metadata"]["name"] == "rel-from-string"

    def test_an_object_without_kind_fails_the_schema(self, chart: str):
        bad = {"apiVersion": "v1", "metadata": {"name": "no-kind"}}
        with pytest.raises(render.HelmError) as error:
            self.render(chart, [bad])
        assert "/extraObjects/0" in str(error.value) and "missing property 'kind'" in str(error.value)

    def test_a_string_without_kind_fails_at_render_time(self, chart: str):
        with pytest.raises(render.HelmError, match=r"extraObjects\[0\] must render to one Kubernetes object with apiVersion, kind and metadata"):
            self.render(chart, ["apiVersion: v1\nmetadata:\n  name: no-kind\n"])

    def test_the_schema_of_extra_objects_is_the_same_in_every_chart(self, chart: str):
        node = dict(schema_of(chart)["properties"]["extraObjects"])
        node.pop("description", None)  # llm-serving's generated schema copies the values.yaml comment
        reference = dict(schema_of("llm-serving")["properties"]["extraObjects"])
        reference.pop("description", None)
        assert node == reference
