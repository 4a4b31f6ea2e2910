#!/usr/bin/env python3
"""Regenerate the generated parts of each chart's README.md from the chart's own sources.

A README opts in with marker pairs; the text between them is replaced:

    <!-- values-table:start --> ... <!-- values-table:end -->
        every documented key of values.yaml: key, type, default, its `# --` comment
    <!-- schema-fields:NAME:start --> ... <!-- schema-fields:NAME:end -->
        the properties of `$defs.NAME` in the chart's values.schema.json (e.g. an entry of a map
        of worker groups, or a model of the app's config)

Every chart's README must have the values table: one generator, one format for all charts.
Hand-written schemas (draft-07 `definitions`, `allOf`, `oneOf`) and generated ones (`$defs`,
`anyOf`) read the same.

Usage: ci/gen_chart_readme.py [--check] [CHART_DIR ...]   (default: every chart under charts/)
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
from chart_values_docs import load_values, parse_values_docs, value_at  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
VALUES_MARKER = re.compile(r"(<!-- values-table:start -->\n)(.*?)(<!-- values-table:end -->)", re.S)
FIELDS_MARKER = re.compile(r"(<!-- schema-fields:(?P<name>[\w.-]+):start -->\n)(.*?)(<!-- schema-fields:(?P=name):end -->)", re.S)


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def default_text(value: Any) -> str:
    if value in ("", None):
        return '`""`' if value == "" else "`null`"
    return f"`{json.dumps(value, separators=(', ', ': '))}`"


def resolve(node: Optional[Dict[str, Any]], schema: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """A schema node with its local `$ref` followed and its `allOf` parts merged in."""
    if not node:
        return node
    ref = node.get("$ref")
    if isinstance(ref, str):
        for prefix, section in (("#/$defs/", "$defs"), ("#/definitions/", "definitions")):
            if ref.startswith(prefix):
                target = resolve(schema.get(section, {}).get(ref[len(prefix) :]), schema) or {}
                node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
                break
    if "allOf" in node:
        merged = {k: v for k, v in node.items() if k != "allOf"}
        for part in node["allOf"]:
            part = resolve(part, schema) or {}
            merged["properties"] = {**part.get("properties", {}), **merged.get("properties", {})}
            for key, value in part.items():
                merged.setdefault(key, value)
        node = merged
    return node


def schema_type(node: Optional[Dict[str, Any]], value: Any = None, schema: Optional[Dict[str, Any]] = None) -> str:
    """A short, readable type: enum values, JSON types, `map of string`; $refs are resolved."""
    node = resolve(node, schema or {})
    if node:
        if "enum" in node:
            return ", ".join(json.dumps(v) for v in node["enum"])
        for combinator in ("anyOf", "oneOf"):
            if combinator in node:
                kinds = [schema_type(option, None, schema) for option in node[combinator] if option.get("type") != "null"]
                return " or ".join(dict.fromkeys(kind for kind in kinds if kind))
        if "type" in node:
            kinds = node["type"] if isinstance(node["type"], list) else [node["type"]]
            if kinds == ["object"] and isinstance(node.get("additionalProperties"), dict) and "properties" not in node:
                return "map of " + (schema_type(node["additionalProperties"], None, schema) or "any")
            if kinds == ["array"] and isinstance(node.get("items"), dict):
                return "array of " + (schema_type(node["items"], None, schema) or "any")
            return " or ".join(kinds)
        if "const" in node:
            return json.dumps(node["const"])
    for python_type, name in ((bool, "boolean"), (int, "integer"), (float, "number"), (str, "string"), (list, "array"), (dict, "object")):
        if isinstance(value, python_type):
            return name
    return ""


def schema_node(schema: Dict[str, Any], path) -> Optional[Dict[str, Any]]:
    node: Optional[Dict[str, Any]] = schema
    for key in path:
        node = resolve(node, schema)
        if node is None:
            return None
        node = (node.get("properties") or {}).get(key)
    return node


def values_table(chart: Path, schema: Dict[str, Any]) -> str:
    values = load_values(chart / "values.yaml")
    docs = [doc for doc in parse_values_docs(chart / "values.yaml") if doc.description is not None]
    # A map whose keys have rows of their own points at them instead of repeating them as JSON.
    parents = {doc.path[:-1] for doc in docs}
    rows = ["| Key | Type | Default | Description |", "|---|---|---|---|"]
    for doc in docs:
        value = value_at(values, doc.path)
        if doc.default_override:
            default = doc.default_override
        elif isinstance(value, dict) and doc.path in parents:
            default = "see the keys below"
        else:
            default = default_text(value)
        kind = schema_type(schema_node(schema, doc.path), value, schema)
        rows.append(f"| `{doc.dotted}` | {cell(kind)} | {cell(default)} | {cell(doc.description)} |")
    return "\n".join(rows) + "\n"


def fields_table(schema: Dict[str, Any], name: str) -> str:
    definition = schema.get("$defs", {}).get(name)
    if definition is None:
        raise SystemExit(f"README asks for schema fields of $defs.{name}, which the values schema does not have")
    required = set(definition.get("required", []))
    rows = ["| Field | Type | Default | Description |", "|---|---|---|---|"]
    for key, node in definition.get("properties", {}).items():
        default = default_text(node["default"]) if "default" in node else ("required" if key in required else "")
        rows.append(f"| `{key}` | {cell(schema_type(node, None, schema))} | {cell(default)} | {cell(node.get('description', ''))} |")
    return "\n".join(rows) + "\n"


def shown(path: Path) -> str:
    """The path as a user would type it: relative to the repository when inside it."""
    resolved = path.resolve()
    return str(resolved.relative_to(REPO)) if resolved.is_relative_to(REPO) else str(path)


def render_readme(chart: Path) -> Optional[str]:
    readme = chart / "README.md"
    if not readme.exists():
        return None
    text = readme.read_text()
    if not VALUES_MARKER.search(text):
        raise SystemExit(f"{shown(readme)} has no values table markers (<!-- values-table:start --> / <!-- values-table:end -->)")
    schema_file = chart / "values.schema.json"
    schema = json.loads(schema_file.read_text()) if schema_file.exists() else {}
    text = VALUES_MARKER.sub(lambda m: m.group(1) + values_table(chart, schema) + m.group(3), text)
    text = FIELDS_MARKER.sub(
        lambda m: m.group(1) + fields_table(schema, m.group("name")) + m.group(4), text
    )
    return text


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="fail if a README is not up to date")
    parser.add_argument("charts", nargs="*", type=Path)
    args = parser.parse_args(argv)
    charts = args.charts or sorted(path.parent for path in (REPO / "charts").glob("*/Chart.yaml"))
    stale = []
    for chart in charts:
        rendered = render_readme(chart)
        if rendered is None:
            continue
        readme = chart / "README.md"
        if rendered == readme.read_text():
            continue
        if args.check:
            stale.append(shown(readme))
        else:
            readme.write_text(rendered)
            print(f"wrote {shown(readme)}")
    if stale:
        print(f"out of date: {', '.join(stale)}; run ci/gen_chart_readme.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
