"""values.yaml against its values.schema.json, for the charts whose schema is written by hand
(kuberay-operator, karpenter-nodepools): every key documented with a `# --` comment, and the same
keys in both. Shared by those charts' test modules."""

from __future__ import annotations

import re
from typing import Any, Dict, List


def schema_node(node: Dict[str, Any], root: Dict[str, Any]) -> Dict[str, Any]:
    """Resolve $ref / allOf so that `properties` are visible."""
    if "$ref" in node:
        name = node["$ref"].rsplit("/", 1)[1]
        return schema_node(root["definitions"][name], root)
    merged = dict(node)
    for part in node.get("allOf", []):
        resolved = schema_node(part, root)
        merged["properties"] = {**resolved.get("properties", {}), **merged.get("properties", {})}
        for key in ("additionalProperties", "propertyNames"):
            if key in resolved and key not in merged:
                merged[key] = resolved[key]
    return merged


def assert_same_keys(values: Any, node: Dict[str, Any], root: Dict[str, Any], path: str) -> None:
    node = schema_node(node, root)
    if not isinstance(values, dict) or "properties" not in node:
        return
    properties = node["properties"]
    for key, value in values.items():
        assert key in properties, f"values.yaml has {path}{key}, the schema does not"
        assert_same_keys(value, properties[key], root, f"{path}{key}.")
    if node.get("additionalProperties") is False:
        extra = set(properties) - set(values)
        # Optional free-form keys may be absent from values.yaml only if the schema does not require them.
        assert not (extra & set(node.get("required", []))), f"schema requires {extra} under {path or '<root>'}"


def undocumented_keys(text: str, schema: Dict[str, Any]) -> List[str]:
    """Keys of values.yaml with no `# --` comment block right above them.

    Children of objects the schema leaves free-form (no `properties`: resources, security contexts,
    label maps) are documented by their parent's comment.
    """
    missing: List[str] = []
    stack: List[tuple] = []  # (indent, key, schema node or None)
    lines = text.splitlines()
    for number, line in enumerate(lines):
        match = re.match(r"^(\s*)([A-Za-z0-9_.\-/\"]+):(\s|$)", line)
        if not match or line.lstrip().startswith("-"):
            continue
        indent, key = len(match.group(1)), match.group(2).strip('"')
        while stack and stack[-1][0] >= indent:
            stack.pop()
        if stack and stack[-1][2] is None:  # inside a free-form object: documented by its parent
            stack.append((indent, key, None))
            continue
        parent = schema_node(stack[-1][2], schema) if stack else schema
        node = parent.get("properties", {}).get(key)
        documented = parent.get("properties") is not None
        if documented:
            above = number - 1
            while above >= 0 and lines[above].strip().startswith("#") and not lines[above].strip().startswith("# --"):
                above -= 1
            if above < 0 or not lines[above].strip().startswith("# --"):
                missing.append(".".join([s[1] for s in stack] + [key]))
        stack.append((indent, key, node if node is not None and "properties" in schema_node(node, schema) else None))
    return missing
