"""tests/schemas/upstream: the committed upstream CRD schemas agree with their provenance file, and
ci/update-crd-schemas.py (which writes both) converts and refuses the way its docstring says."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
from pathlib import Path
from typing import Any, Dict, List

import jsonschema
import pytest
import yaml

from tests.charts import render

FOLDER = render.UPSTREAM_CRD_SCHEMAS
SOURCES = json.loads((FOLDER / "SOURCES.json").read_text())
ENTRIES: List[Dict[str, Any]] = SOURCES["files"]
_spec = importlib.util.spec_from_file_location("update_crd_schemas", render.REPO / "ci" / "update-crd-schemas.py")
assert _spec and _spec.loader
update = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(update)


def entry_id(entry: Dict[str, Any]) -> str:
    return str(entry["file"])


class TestCommittedCopies:
    def test_every_schema_file_is_listed_and_every_listed_file_is_there(self):
        present = {p.relative_to(FOLDER).as_posix() for p in FOLDER.rglob("*.json") if p.name != "SOURCES.json"}
        listed = [e["file"] for e in ENTRIES]
        assert len(listed) == len(set(listed)), "a file is listed twice"
        assert present == set(listed)

    @pytest.mark.parametrize("entry", ENTRIES, ids=entry_id)
    def test_file_is_the_one_recorded(self, entry):
        data = (FOLDER / entry["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"], (
            f"{entry['file']} was changed by hand; regenerate it with ci/update-crd-schemas.py"
        )

    @pytest.mark.parametrize("entry", ENTRIES, ids=entry_id)
    def test_provenance_is_complete(self, entry):
        assert re.fullmatch(r"[\w.-]+/[\w.-]+", entry["repo"])
        assert re.fullmatch(r"v\d+\.\d+\.\d+", entry["tag"]), "pinned to a release tag, not a branch"
        assert re.fullmatch(r"[0-9a-f]{40}", entry["commit"])
        assert re.fullmatch(r"[0-9a-f]{64}", entry["upstream_sha256"])
        assert entry["path"].endswith(".yaml")
        assert entry["url"] == f"https://raw.githubusercontent.com/{entry['repo']}/{entry['tag']}/{entry['path']}"
        assert entry["file"] == f"{entry['group']}/{entry['kind'].lower()}_{entry['version']}.json"

    @pytest.mark.parametrize("entry", ENTRIES, ids=entry_id)
    def test_schema_is_for_its_kind_and_usable(self, entry):
        schema = json.loads((FOLDER / entry["file"]).read_text())
        jsonschema.Draft7Validator.check_schema(schema)
        gvk = {"group": entry["group"], "kind": entry["kind"], "version": entry["version"]}
        assert schema["x-kubernetes-group-version-kind"] == [gvk]
        assert schema["properties"]["apiVersion"]["enum"] == [f"{entry['group']}/{entry['version']}"]
        assert schema["properties"]["kind"]["enum"] == [entry["kind"]]
        assert {"apiVersion", "kind"} <= set(schema["required"])

    def test_what_render_uses_comes_from_here(self):
        schema = render.upstream_crd_schema("karpenter.sh", "NodePool", "v1")
        assert schema == render.strict(json.loads((FOLDER / "karpenter.sh" / "nodepool_v1.json").read_text()))


CRD = """\
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.example.io}
spec:
  group: example.io
  names: {kind: Widget, plural: widgets}
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          properties:
            apiVersion: {type: string}
            kind: {type: string}
            spec:
              type: object
              properties:
                strategy: {type: string, pattern: "^(?i)(abort|warn)?$"}
                since: {type: string, format: date-time, nullable: true}
    - name: v1beta1
      served: false
      storage: false
      schema: {openAPIV3Schema: {type: object}}
"""


def widget_sources(upstream: bytes) -> Dict[str, Any]:
    entry = {
        "file": "example.io/widget_v1.json", "group": "example.io", "kind": "Widget", "version": "v1",
        "repo": "example/widgets", "tag": "v1.0.0", "commit": "0" * 40, "path": "crds/widgets.yaml",
        "url": "https://raw.githubusercontent.com/example/widgets/v1.0.0/crds/widgets.yaml",
        "upstream_sha256": hashlib.sha256(upstream).hexdigest(), "sha256": "", "local_changes": [],
    }
    return {"files": [entry]}


def source_dir(tmp_path: Path, content: bytes) -> Path:
    path = tmp_path / "src" / "example" / "widgets" / "v1.0.0" / "crds" / "widgets.yaml"
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    return tmp_path / "src"


class TestConversion:
    def test_converts_as_documented(self):
        schema, changes = update.convert(yaml.safe_load(CRD), "v1")
        assert list(schema)[0] == "$schema" and schema["$schema"] == "http://json-schema.org/draft-07/schema#"
        assert schema["properties"]["apiVersion"] == {"type": "string", "enum": ["example.io/v1"]}
        assert schema["properties"]["kind"] == {"type": "string", "enum": ["Widget"]}
        assert schema["required"] == ["apiVersion", "kind"]
        assert schema["x-kubernetes-group-version-kind"] == [{"group": "example.io", "kind": "Widget", "version": "v1"}]
        spec = schema["properties"]["spec"]["properties"]
        assert spec["since"]["type"] == ["string", "null"] and spec["since"]["nullable"] is True
        assert re.fullmatch(spec["strategy"]["pattern"], "WaRn") and not re.fullmatch(spec["strategy"]["pattern"], "off")
        assert [c["kind"] for c in changes] == ["pattern", "nullable"]
        assert changes[1]["at"] == "$.properties.spec.properties.since"

    def test_only_served_versions(self):
        with pytest.raises(update.RefusedError, match="v1beta1 is not served"):
            update.convert(yaml.safe_load(CRD), "v1beta1")

    def test_a_pattern_python_cannot_compile_stops_the_conversion(self):
        crd = yaml.safe_load(CRD.replace("^(?i)(abort|warn)?$", "^a(?i)b$"))
        with pytest.raises(update.RefusedError, match="PORTABLE_PATTERNS"):
            update.convert(crd, "v1")

    def test_regenerates_the_file_and_records_its_sha256(self, tmp_path):
        sources = widget_sources(CRD.encode())
        files = update.regenerate(tmp_path, sources, update.from_source_dir(source_dir(tmp_path, CRD.encode())))
        recorded = json.loads(files["SOURCES.json"])["files"][0]
        assert recorded["sha256"] == hashlib.sha256(files["example.io/widget_v1.json"]).hexdigest()
        assert len(recorded["local_changes"]) == 2

    def test_refuses_an_upstream_file_that_is_not_the_pinned_one(self, tmp_path):
        sources = widget_sources(CRD.encode())
        tampered = CRD.replace("nullable: true", "nullable: false").encode()
        with pytest.raises(update.RefusedError, match="Refusing to convert"):
            update.regenerate(tmp_path, sources, update.from_source_dir(source_dir(tmp_path, tampered)))

    def test_check_mode_reports_a_hand_edited_copy(self, tmp_path, capsys):
        source = source_dir(tmp_path, CRD.encode())
        out = tmp_path / "out"
        (out).mkdir()
        (out / "SOURCES.json").write_text(json.dumps(widget_sources(CRD.encode())))
        args = ["--source-dir", str(source), "--sources", str(out / "SOURCES.json"), "--out", str(out)]
        assert update.main(args) == 0
        assert update.main([*args, "--check"]) == 0
        (out / "example.io" / "widget_v1.json").write_text("{}\n")
        assert update.main([*args, "--check"]) == 1
        assert "changed   example.io/widget_v1.json" in capsys.readouterr().out
