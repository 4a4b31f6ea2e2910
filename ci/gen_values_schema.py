#!/usr/bin/env python3
"""Write charts/llm-serving/values.schema.json and charts/llm-batch/values.schema.json from their sources.

- `app:` comes from the app's own pydantic models, `llm_serving.serve_config.AppBlock.model_json_schema()`
  (the build args of llm_serving.config.AppConfig and the live llm_serving.traffic_config.TrafficConfig),
  so `helm template` rejects what the app would reject (types, enums, bounds, unknown keys). Its
  `$defs` move to the root `$defs` under an `app.` prefix (helm 3.19 resolves local `$ref`s into
  `$defs`; a nested `$defs` would not be found from `#/$defs/...`). Model names must match the
  app's MODEL_NAME_PATTERN.
- Everything else comes from the hand-written charts/llm-serving/values.schema.chart.yaml. A key
  without a `description` there takes the `# --` comment of the same key in values.yaml.

charts/llm-batch is built the same way: `job:` from llm_serving.batch_job.BatchJobConfig (its $defs
under a `job.` prefix), the rest from charts/llm-batch/values.schema.chart.yaml.

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


def add_descriptions(schema: Dict[str, Any], values: Path = VALUES) -> None:
    """Fill `description` of chart keys from the `# --` comments of values.yaml."""
    for doc in parse_values_docs(values):
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


BATCH_CHART = REPO / "charts" / "llm-batch"
BATCH_OUTPUT = BATCH_CHART / "values.schema.json"
JOB_DEF_PREFIX = "job."


def build_batch() -> Dict[str, Any]:
    """charts/llm-batch: `job:` is the batch job's pydantic model, the rest its chart schema."""
    from llm_serving.batch_job import BatchJobConfig

    schema = yaml.safe_load((BATCH_CHART / "values.schema.chart.yaml").read_text())
    add_descriptions(schema, BATCH_CHART / "values.yaml")
    job = BatchJobConfig.model_json_schema()
    definitions = job.pop("$defs", {})

    def rewrite(node: Any) -> Any:
        if isinstance(node, dict):
            return {
                key: rewrite(
                    "#/$defs/" + JOB_DEF_PREFIX + value[len("#/$defs/") :]
                    if key == "$ref" and isinstance(value, str) and value.startswith("#/$defs/")
                    else value
                )
                for key, value in node.items()
                if not (key in DROPPED_KEYWORDS and isinstance(value, str))
            }
        if isinstance(node, list):
            return [rewrite(item) for item in node]
        return node

    job_root = rewrite(job)
    job_root["description"] = (
        schema["properties"]["job"].get("description", "") + " (generated from llm_serving.batch_job.BatchJobConfig)"
    ).strip()
    schema["properties"]["job"] = job_root
    schema["$defs"] = {**schema.get("$defs", {}), **{JOB_DEF_PREFIX + n: rewrite(b) for n, b in definitions.items()}}
    return schema


def render_batch() -> str:
    return json.dumps(build_batch(), indent=2, ensure_ascii=False) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="fail if values.schema.json is not up to date")
    args = parser.parse_args()
    failed = 0
    for output, text in ((OUTPUT, render()), (BATCH_OUTPUT, render_batch())):
        if args.check:
            current = output.read_text() if output.exists() else ""
            if current != text:
                diff = difflib.unified_diff(
                    current.splitlines(), text.splitlines(), str(output), "generated", lineterm="", n=2
                )
                print("\n".join(list(diff)[:60]), file=sys.stderr)
                print(f"{output.relative_to(REPO)} is out of date; run ci/gen_values_schema.py", file=sys.stderr)
                failed = 1
            continue
        output.write_text(text)
        print(f"wrote {output.relative_to(REPO)}")
    return failed


if __name__ == "__main__":
    sys.exit(main())
