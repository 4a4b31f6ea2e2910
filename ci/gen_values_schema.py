#!/usr/bin/env python3
"""Write charts/llm-serving/values.schema.json from its two sources.

- `app:` comes from the app's own pydantic models, `llm_serving.serve_config.AppBlock.model_json_schema()`
  (the build args of llm_serving.config.AppConfig and the live llm_serving.traffic_config.TrafficConfig),
  so `helm template` rejects what the app would reject (types, enums, bounds, unknown keys). Its
  `$defs` move to the root `$defs` under an `app.` prefix (helm 3.19 resolves local `$ref`s into
  `$defs`; a nested `$defs` would not be found from `#/$defs/...`). Model names must match the
  app's MODEL_NAME_PATTERN.
- Everything else comes from the hand-written charts/llm-serving/values.schema.chart.yaml. A key
  without a `description` there takes the `# --` comment of the same key in values.yaml.

Usage: ci/gen_values_schema.py [--check]   (--check: exit 1 if the file on disk differs)
"""

from __future__ import annotations

import argparse
import copy
import difflib
import json
import sys
from pathlib import Path
from typing import Any, Dict, Tuple

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from chart_values_docs import parse_values_docs  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "charts" / "llm-serving"
CHART_SCHEMA = CHART / "values.schema.chart.yaml"
VALUES = CHART / "values.yaml"
OUTPUT = CHART / "values.schema.json"
APP_DEF_PREFIX = "app."
# pydantic's generated titles repeat the field name; they add nothing to helm's messages.
DROPPED_KEYWORDS = {"title"}


def app_schema() -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """The app block's schema with its $defs split out and every $ref pointed at the root $defs."""
    from llm_serving.config import MODEL_NAME_PATTERN
    from llm_serving.serve_config import AppBlock

    schema = AppBlock.model_json_schema()
    definitions = schema.pop("$defs", {})

    def rewrite(node: Any) -> Any:
        if isinstance(node, dict):
            result = {}
            for key, value in node.items():
                if key in DROPPED_KEYWORDS and isinstance(value, str):
                    continue
                if key == "$ref" and isinstance(value, str) and value.startswith("#/$defs/"):
                    value = "#/$defs/" + APP_DEF_PREFIX + value[len("#/$defs/") :]
                result[key] = rewrite(value)
            return result
        if isinstance(node, list):
            return [rewrite(item) for item in node]
        return node

    root = rewrite(schema)
    # The app's model-name rule (a validator in pydantic) as a pattern property: helm's message for a
    # bad name then names the path and the key, which a propertyNames failure does not.
    models = root["properties"]["models"]
    models["patternProperties"] = {MODEL_NAME_PATTERN: models.pop("additionalProperties")}
    models["additionalProperties"] = False
    defs = {APP_DEF_PREFIX + name: rewrite(body) for name, body in definitions.items()}
    return root, defs


def add_descriptions(schema: Dict[str, Any]) -> None:
    """Fill `description` of chart keys from the `# --` comments of values.yaml."""
    for doc in parse_values_docs(VALUES):
        if doc.description is None:
            continue
        node = schema
        for key in doc.path:
            properties = node.get("properties")
            if not isinstance(properties, dict) or key not in properties:
                node = None
                break
            node = properties[key]
        if node is not None and "description" not in node:
            node["description"] = doc.description


def build() -> Dict[str, Any]:
    schema = yaml.safe_load(CHART_SCHEMA.read_text())
    add_descriptions(schema)
    app_root, app_defs = app_schema()
    app_root["description"] = (
        schema["properties"]["app"].get("description", "") + " (generated from llm_serving.serve_config.AppBlock)"
    ).strip()
    schema["properties"]["app"] = app_root
    clashes = set(app_defs) & set(schema.get("$defs", {}))
    if clashes:
        raise SystemExit(f"$defs names used by both the chart and the app schema: {sorted(clashes)}")
    schema["$defs"] = {**schema.get("$defs", {}), **app_defs}
    return copy.deepcopy(schema)


def render() -> str:
    return json.dumps(build(), indent=2, ensure_ascii=False) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="fail if values.schema.json is not up to date")
    args = parser.parse_args()
    text = render()
    if args.check:
        current = OUTPUT.read_text() if OUTPUT.exists() else ""
        if current != text:
            diff = difflib.unified_diff(
                current.splitlines(), text.splitlines(), str(OUTPUT), "generated", lineterm="", n=2
            )
            print("\n".join(list(diff)[:60]), file=sys.stderr)
            print(f"{OUTPUT.relative_to(REPO)} is out of date; run ci/gen_values_schema.py", file=sys.stderr)
            return 1
        return 0
    OUTPUT.write_text(text)
    print(f"wrote {OUTPUT.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
