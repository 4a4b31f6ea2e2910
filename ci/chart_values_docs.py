"""Read the helm-docs style `# --` comments of a chart's values.yaml.

    # -- What the key does; the comment may continue
    # on following comment lines.
    # @default -- what to show instead of the literal default (optional)
    key: value

Used by gen_values_schema.py (schema descriptions) and gen_chart_readme.py (README values table),
so the comment in values.yaml is the one place a key is documented.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import yaml

_KEY_LINE = re.compile(r"^(?P<indent> *)(?P<key>[^\s#:\-][^:#]*?|\"[^\"]+\"|'[^']+'):(?:\s|$)")
_DOC_START = re.compile(r"^\s*# -- ?(?P<text>.*)$")
_DOC_DEFAULT = re.compile(r"^\s*# @default -- ?(?P<text>.*)$")
_COMMENT = re.compile(r"^\s*#(?P<text>.*)$")


@dataclass
class ValueDoc:
    path: Tuple[str, ...]
    description: Optional[str]  # None: the key has no `# --` comment
    default_override: Optional[str]
    line: int

    @property
    def dotted(self) -> str:
        return ".".join(self.path)


def parse_values_docs(values_file: Path) -> List[ValueDoc]:
    """Every mapping key of values.yaml (block style, outside lists) with its `# --` comment."""
    docs: List[ValueDoc] = []
    stack: List[Tuple[int, str]] = []  # (indent, key) of the enclosing keys
    pending: Optional[List[str]] = None
    default_override: Optional[str] = None
    in_list_at: Optional[int] = None  # indent of a block list we are inside (its keys are not values keys)

    for number, line in enumerate(values_file.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        if (match := _DOC_DEFAULT.match(line)) is not None:
            default_override = match.group("text").strip()
            continue
        if (match := _DOC_START.match(line)) is not None:
            pending = [match.group("text").strip()]
            continue
        if (match := _COMMENT.match(line)) is not None:
            if pending is not None:
                pending.append(match.group("text").strip())
            continue
        indent = len(line) - len(line.lstrip(" "))
        if in_list_at is not None and indent > in_list_at:
            continue
        in_list_at = None
        if line.lstrip().startswith("- "):
            in_list_at = indent
            pending, default_override = None, None
            continue
        match = _KEY_LINE.match(line)
        if match is None:
            continue
        key = match.group("key").strip().strip("\"'")
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = tuple(k for _, k in stack) + (key,)
        description = " ".join(part for part in pending if part) if pending is not None else None
        docs.append(ValueDoc(path=path, description=description, default_override=default_override, line=number))
        pending, default_override = None, None
        stack.append((indent, key))
    return docs


def load_values(values_file: Path) -> Dict[str, Any]:
    return yaml.safe_load(values_file.read_text()) or {}


def value_at(values: Dict[str, Any], path: Tuple[str, ...]) -> Any:
    node: Any = values
    for key in path:
        node = node[key]
    return node
