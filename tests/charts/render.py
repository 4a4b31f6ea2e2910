"""Render charts with the real helm and validate every object before a test looks at it.

- Kubernetes kinds: kubernetes-validate's strict schemas (unknown fields are errors).
- Custom kinds: the JSON Schema the project owns in tests/schemas/<group>/<kind>_<version>.json
  (RayService, checked against upstream in its own test), else the upstream CRD schemas beside the
  checkout in ../shared/crd-schemas (KubeRay, Karpenter, prometheus-operator, Flux).
A kind with no schema anywhere fails: nothing is rendered unchecked.
"""

from __future__ import annotations

import functools
import json
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional

import jsonschema
import kubernetes_validate
import yaml

REPO = Path(__file__).resolve().parents[2]
HELM = REPO / ".tools" / "bin" / "helm"
CHARTS = REPO / "charts"
VALUES = REPO / "values"
PROJECT_SCHEMAS = REPO / "tests" / "schemas"
UPSTREAM_CRD_SCHEMAS = REPO.parent / "shared" / "crd-schemas"
KUBERNETES_VERSION = "1.33.0"
# API groups Kubernetes itself serves ("" is the core group); everything else is a custom kind.
BUILTIN_GROUPS = {
    "", "apps", "batch", "policy", "autoscaling", "networking.k8s.io", "rbac.authorization.k8s.io",
    "coordination.k8s.io", "apiextensions.k8s.io", "admissionregistration.k8s.io", "scheduling.k8s.io",
    "storage.k8s.io", "discovery.k8s.io",
}


class HelmError(RuntimeError):
    """helm failed; the message is helm's own stderr (what a user would see)."""


def helm(*args: str) -> str:
    result = subprocess.run([str(HELM), *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise HelmError(result.stderr.strip())
    return result.stdout


def render_chart(
    chart: str,
    values_files: Iterable[Path] = (),
    values: Optional[Dict[str, Any]] = None,
    show_only: Iterable[str] = (),
    api_versions: Iterable[str] = (),
    namespace: str = "llm",
    release: str = "test",
    validate: bool = True,
) -> List[Dict[str, Any]]:
    """`helm template` a chart under charts/ and return its objects, each validated."""
    args = ["template", release, str(CHARTS / chart), "--namespace", namespace]
    for path in values_files:
        args += ["-f", str(path)]
    for template in show_only:
        args += ["--show-only", template]
    for api_version in api_versions:
        args += ["--api-versions", api_version]
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as extra:
        if values:
            yaml.safe_dump(values, extra)
            extra.flush()
            args += ["-f", extra.name]
        output = helm(*args)
    objects = [doc for doc in yaml.safe_load_all(output) if doc]
    if validate:
        for obj in objects:
            validate_object(obj)
    return objects


def validate_object(obj: Dict[str, Any]) -> None:
    api_version, kind = obj.get("apiVersion", ""), obj.get("kind", "")
    group, _, version = api_version.rpartition("/")
    if group in BUILTIN_GROUPS:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        return
    schema = crd_schema(group, kind, version)
    if schema is None:
        raise AssertionError(f"no schema to validate {api_version} {kind}; add one under tests/schemas")
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(obj), key=lambda e: list(e.path))
    if errors:
        name = obj.get("metadata", {}).get("name")
        details = "\n".join(f"  {'.'.join(map(str, e.path)) or '<root>'}: {e.message}" for e in errors[:20])
        raise AssertionError(f"{kind} {name} does not match its schema:\n{details}")


@functools.lru_cache(maxsize=None)
def crd_schema(group: str, kind: str, version: str) -> Optional[Dict[str, Any]]:
    name = f"{group}/{kind.lower()}_{version}.json"
    for root in (PROJECT_SCHEMAS, UPSTREAM_CRD_SCHEMAS):
        path = root / name
        if path.is_file():
            return json.loads(path.read_text())
    return None


def by_kind(objects: List[Dict[str, Any]], kind: str) -> List[Dict[str, Any]]:
    return [obj for obj in objects if obj["kind"] == kind]


def one(objects: List[Dict[str, Any]], kind: str) -> Dict[str, Any]:
    found = by_kind(objects, kind)
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]
