"""values.schema.json and README.md are generated and stay in step with their sources: the app's
pydantic model, the hand-written chart schema and the `# --` comments of values.yaml."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from llm_serving.config import AppConfig, ApiKeysConfig, AutoscalingConfig, GatewayConfig, ModelConfig
from llm_serving.serve_config import AppBlock
from tests.charts import render
from tests.charts.llm_serving_chart import CHART_DIR, PROFILES

REPO = render.REPO
sys.path.insert(0, str(REPO / "ci"))
import chart_values_docs  # noqa: E402
import gen_chart_readme  # noqa: E402
import gen_values_schema  # noqa: E402

SCHEMA_FILE = CHART_DIR / "values.schema.json"


def schema():
    return json.loads(SCHEMA_FILE.read_text())


def run(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "ci" / script), *args], capture_output=True, text=True, cwd=REPO)


class TestGeneratedFilesAreCurrent:
    def test_values_schema(self):
        result = run("gen_values_schema.py", "--check")
        assert result.returncode == 0, result.stderr


class TestAppPartComesFromThePydanticModel:
    def test_app_properties_are_the_models_fields(self):
        app = schema()["properties"]["app"]
        assert set(app["properties"]) == set(AppBlock.model_fields)  # the build args and traffic
        assert app["required"] == ["models"]
        assert app["additionalProperties"] is False
        definitions = schema()["$defs"]
        for model in (ModelConfig, AutoscalingConfig, GatewayConfig, ApiKeysConfig):
            definition = definitions[f"app.{model.__name__}"]
            assert set(definition["properties"]) == set(model.model_fields), model.__name__
            assert definition["additionalProperties"] is False, f"{model.__name__} is extra=forbid"

    def test_descriptions_and_bounds_come_along(self):
        model = schema()["$defs"]["app.ModelConfig"]["properties"]
        assert model["tensor_parallel_size"]["description"] == ModelConfig.model_fields["tensor_parallel_size"].description
        assert model["tensor_parallel_size"]["minimum"] == 1 and model["tensor_parallel_size"]["maximum"] == 16
        assert model["task"]["enum"] == ["generate", "embed"]

    def test_every_ref_resolves_at_the_root(self):
        text = SCHEMA_FILE.read_text()
        definitions = schema()["$defs"]
        for ref in {part.split('"')[0] for part in text.split('"$ref": "#/$defs/')[1:]}:
            assert ref in definitions, ref

    def test_model_names_follow_the_apps_pattern(self):
        from llm_serving.config import MODEL_NAME_PATTERN

        models = schema()["properties"]["app"]["properties"]["models"]
        assert list(models["patternProperties"]) == [MODEL_NAME_PATTERN]
        assert models["additionalProperties"] is False

    @pytest.mark.parametrize(
        "app, accepted",
        [
            ({"models": {"m": {"source": "org/m"}}, "gateway": {"auth": {"mode": "none"}}}, True),
            ({"models": {"m": {"source": "org/m", "tensor_parallel_size": 4, "engine_kwargs": {"x": 1}}}, "gateway": {"auth": {"mode": "none"}}}, True),
            ({"models": {"m": {"source": "org/m", "tp": 4}}}, False),
            ({"models": {"m": {"source": "org/m", "device": "tpu"}}}, False),
            ({"models": {"m": {"source": "org/m", "max_model_len": "8k"}}}, False),
            ({"models": {"m": {"source": "org/m", "autoscaling": {"max_replicas": 0}}}}, False),
            ({"models": {"m": {"revision": "abc"}}}, False),
            ({"models": {}}, False),
            ({"models": {"m": {"source": "org/m"}}, "gateway": {"auth": {"mode": "basic"}}}, False),
            ({"models": {"m": {"source": "org/m"}}, "gatway": {}}, False),
            ({"models": {"has space": {"source": "org/m"}}}, False),
        ],
    )
    def test_schema_and_app_agree(self, app, accepted):
        """On what JSON Schema can express, the generated schema and the pydantic model agree."""
        values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
        values["app"] = app
        schema_ok = not list(jsonschema.Draft202012Validator(schema()).iter_errors(values))
        try:
            AppConfig.model_validate(app)
            app_ok = True
        except Exception:
            app_ok = False
        assert schema_ok == accepted
        assert app_ok == accepted


def undocumented_keys(values_file: Path) -> list:
    """Keys of chart-owned objects without a `# --` comment (helm-docs style). A grouping key whose
    children are all documented needs none; keys inside open maps (resources, contexts) are data."""
    docs = chart_values_docs.parse_values_docs(values_file)
    documented = {doc.path for doc in docs if doc.description is not None}
    full = schema()
    missing = []
    for doc in docs:
        if doc.description is not None:
            continue
        parent = gen_chart_readme.schema_node(full, doc.path[:-1])
        in_closed_object = (
            parent is not None and parent.get("additionalProperties") is False and doc.path[-1] in parent.get("properties", {})
        )
        descendants = [other.path for other in docs if other.path[: len(doc.path)] == doc.path and other.path != doc.path]
        leaves = [path for path in descendants if not any(o[: len(path)] == path and o != path for o in descendants)]
        is_documented_group = bool(leaves) and all(
            any(path[: len(d)] == d for d in documented if len(d) > len(doc.path)) for path in leaves
        )
        if in_closed_object and not is_documented_group:
            missing.append(doc.dotted)
    return missing


class TestChartPart:
    def test_schema_is_valid(self):
        jsonschema.Draft202012Validator.check_schema(schema())

    def test_defaults_pass_the_schema_once_a_model_is_given(self):
        values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
        values["app"] = {"models": {"m": {"source": "org/m"}}}
        errors = [error.message for error in jsonschema.Draft202012Validator(schema()).iter_errors(values)]
        assert errors == []

    @pytest.mark.parametrize("profile", PROFILES, ids=lambda path: path.stem)
    def test_profiles_pass_the_schema(self, profile):
        values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())

        def merge(base, override):
            for key, value in override.items():
                base[key] = merge(base.get(key, {}), value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
            return base

        merged = merge(copy.deepcopy(values), yaml.safe_load(profile.read_text()))
        assert [e.message for e in jsonschema.Draft202012Validator(schema()).iter_errors(merged)] == []

    def test_chart_owned_objects_are_closed(self):
        """Every object schema that lists properties rejects unknown keys (chart-owned and the app's);
        free-form Kubernetes objects (affinity, security contexts) are typed `object` without properties."""
        open_objects = []

        def walk(node, path):
            if isinstance(node, dict):
                if "properties" in node and node.get("additionalProperties") is not False:
                    open_objects.append(path or "<root>")
                for key, child in node.items():
                    walk(child, path if key in ("properties", "$defs", "patternProperties") else f"{path}.{key}")
            elif isinstance(node, list):
                for child in node:
                    walk(child, path)

        walk(schema(), "")
        assert open_objects == []

    def test_every_values_key_is_documented(self):
        assert undocumented_keys(CHART_DIR / "values.yaml") == []

    def test_a_key_without_a_comment_is_found(self, tmp_path: Path):
        values = tmp_path / "values.yaml"
        text = (CHART_DIR / "values.yaml").read_text()
        comment = "  # -- Image digest (`sha256:...`). When set the image is pinned by digest as `repository:tag@digest`.\n"
        assert comment in text
        values.write_text(text.replace(comment, ""))
        assert undocumented_keys(values) == ["image", "image.digest"]

    def test_schema_descriptions_come_from_the_comments(self):
        descriptions = {doc.dotted: doc.description for doc in chart_values_docs.parse_values_docs(CHART_DIR / "values.yaml") if doc.description}
        full = schema()
        assert full["properties"]["fastPath"]["properties"]["enabled"]["description"] == descriptions["fastPath.enabled"]
        assert full["properties"]["upgradeStrategy"]["properties"]["type"]["description"] == descriptions["upgradeStrategy.type"]

    def test_generator_builds_the_same_thing_in_process(self):
        assert gen_values_schema.render() == SCHEMA_FILE.read_text()
