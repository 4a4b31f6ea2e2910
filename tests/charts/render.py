"""Render charts with the real helm and validate every object before a test looks at it.

- Kubernetes kinds: kubernetes-validate's strict schemas (unknown fields are errors).
- Custom kinds: the JSON Schema the project owns in tests/schemas/<group>/<kind>_<version>.json
  (RayService, checked against upstream in its own test; it may `$ref` Kubernetes definitions by
  their id, https://kubernetes.io/api/_definitions.json#/$defs/...), else the upstream CRD schemas
  beside the checkout in ../shared/crd-schemas (KubeRay, Karpenter, prometheus-operator, Flux),
  made strict the way kubeconform -strict does (unknown fields are errors there too).
A kind with no schema anywhere fails: nothing is rendered unchecked.
"""

from __future__ import annotations

import copy
import functools
import importlib.resources
import json
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional

import jsonschema
import kubernetes_validate
import yaml
from referencing import Registry, Resource

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
    chart_dir: Optional[Path] = None,
) -> List[Dict[str, Any]]:
    """`helm template` a chart under charts/ (or chart_dir) and return its objects, each validated.

    Rendered for the Kubernetes version the objects are validated against, so Capabilities
    checks and the schemas agree.
    """
    args = [
        "template", release, str(chart_dir or CHARTS / chart), "--namespace", namespace,
        "--kube-version", KUBERNETES_VERSION,
    ]
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
    validate_against(obj, schema)


def validate_against(obj: Dict[str, Any], schema: Dict[str, Any]) -> None:
    """Validate with the draft the schema declares (draft 7 if none); Kubernetes definitions resolve."""
    validator_class = jsonschema.validators.validator_for(schema, default=jsonschema.Draft7Validator)
    validator = validator_class(schema, registry=kubernetes_registry())
    errors = sorted(validator.iter_errors(obj), key=lambda e: list(e.path))
    if errors:
        name = obj.get("metadata", {}).get("name")
        details = "\n".join(f"  {'.'.join(map(str, e.path)) or '<root>'}: {e.message}" for e in errors[:20])
        raise AssertionError(f"{obj.get('kind')} {name} does not match its schema:\n{details}")


@functools.lru_cache(maxsize=None)
def kubernetes_registry() -> Registry:
    """kubernetes-validate's strict definitions of KUBERNETES_VERSION, under their own $id."""
    definitions = json.loads(
        importlib.resources.files("kubernetes_validate")
        .joinpath("kubernetes-json-schema", f"v{KUBERNETES_VERSION}-local-strict", "_definitions.json")
        .read_text()
    )
    return Resource.from_contents(definitions) @ Registry()


@functools.lru_cache(maxsize=None)
def crd_schema(group: str, kind: str, version: str) -> Optional[Dict[str, Any]]:
    name = f"{group}/{kind.lower()}_{version}.json"
    project = PROJECT_SCHEMAS / name
    if project.is_file():
        return json.loads(project.read_text())
    return upstream_crd_schema(group, kind, version)


@functools.lru_cache(maxsize=None)
def upstream_crd_schema(group: str, kind: str, version: str) -> Optional[Dict[str, Any]]:
    """The upstream CRD's schema from ../shared/crd-schemas, made strict."""
    path = UPSTREAM_CRD_SCHEMAS / group / f"{kind.lower()}_{version}.json"
    if not path.is_file():
        return None
    return strict(json.loads(path.read_text()))


def strict(node: Any) -> Any:
    """kubeconform -strict: close every object schema that lists properties and is not open on purpose."""
    node = copy.deepcopy(node)

    def close(item: Any) -> None:
        if isinstance(item, dict):
            if (
                "properties" in item
                and "additionalProperties" not in item
                and not item.get("x-kubernetes-preserve-unknown-fields")
            ):
                item["additionalProperties"] = False
            for value in item.values():
                close(value)
        elif isinstance(item, list):
            for value in item:
                close(value)

    close(node)
    return node


def by_kind(objects: List[Dict[str, Any]], kind: str) -> List[Dict[str, Any]]:
    return [obj for obj in objects if obj["kind"] == kind]


def one(objects: List[Dict[str, Any]], kind: str) -> Dict[str, Any]:
    found = by_kind(objects, kind)
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]
