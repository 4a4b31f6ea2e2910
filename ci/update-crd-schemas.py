#!/usr/bin/env python3
"""Regenerate tests/schemas/upstream/ from the upstream CRDs pinned in its SOURCES.json.

Each entry of SOURCES.json pins one converted file to an upstream repository, release tag, tag
commit, path and the sha256 of that upstream CRD YAML. This script fetches each YAML, refuses it
unless its sha256 is the pinned one, converts the listed served version to a JSON Schema and writes
it, then records the sha256 of every converted file (and the local changes made) in SOURCES.json.

    ci/update-crd-schemas.py                            # download from raw.githubusercontent.com
    ci/update-crd-schemas.py --from-git-mirrors DIR     # read DIR/<owner>+<name>[/repo] (bare git)
    ci/update-crd-schemas.py --source-dir DIR           # read DIR/<owner>/<name>/<tag>/<path>
    ... --check                                         # write nothing; exit 1 if a file would change

Conversion, per served version (kubeconform / CRDs-catalog style):
  1. spec.versions[].schema.openAPIV3Schema as is (descriptions, x-kubernetes-* keys kept);
  2. "$schema": draft-07 first;
  3. enum [<group>/<version>] on properties.apiVersion, enum [<Kind>] on properties.kind;
  4. apiVersion and kind appended to the root `required`;
  5. x-kubernetes-group-version-kind at the root;
  6. fixes so Python's jsonschema/re can use it: `nullable: true` on a single-typed node becomes
     type [<type>, "null"]; Go-only regexps are replaced from PORTABLE_PATTERNS (every pattern must
     then compile with `re`, or the script stops and says which).
To pin a new release: change tag, commit, path and url of its entries, run the script, check the
upstream file yourself, then put the sha256 it reports into upstream_sha256 and run it again.
Standard library + PyYAML only.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import re
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import yaml

REPO = Path(__file__).resolve().parents[1]
SCHEMAS = REPO / "tests" / "schemas" / "upstream"
SOURCES = "SOURCES.json"
DRAFT_07 = "http://json-schema.org/draft-07/schema#"
RAW_URL = "https://raw.githubusercontent.com/{repo}/{tag}/{path}"
# Go's regexp accepts a flag group after `^`; Python (3.11+) only at the very start. Same language.
PORTABLE_PATTERNS = {
    "^(?i)(abort|warn)?$": "^([aA][bB][oO][rR][tT]|[wW][aA][rR][nN])?$",
}
Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the C loader reads the 1 MB KubeRay CRDs in seconds


class RefusedError(RuntimeError):
    """An upstream file is not the pinned one, or cannot be converted; the message names the fix."""


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def dump(schema: Dict[str, Any]) -> bytes:
    return (json.dumps(schema, indent=2, ensure_ascii=False) + "\n").encode()


# --- where the upstream YAML comes from -------------------------------------------------------------

def from_network(entry: Dict[str, Any]) -> bytes:
    try:
        with urllib.request.urlopen(entry["url"], timeout=60) as response:
            return bytes(response.read())
    except OSError as error:  # URLError, timeouts, DNS failures
        raise RefusedError(f"cannot download {entry['url']}: {error}; offline, use --from-git-mirrors "
                           "or --source-dir") from error


def from_git_mirrors(root: Path) -> Callable[[Dict[str, Any]], bytes]:
    """Bare clones named <owner>+<name> (with or without a `repo` subfolder), read at the tag commit."""

    def read(entry: Dict[str, Any]) -> bytes:
        name = entry["repo"].replace("/", "+")
        candidates = [root / name / "repo", root / name, root / f"{name}.git"]
        git_dir = next((c for c in candidates if (c / "HEAD").is_file()), None)
        if git_dir is None:
            raise RefusedError(f"{entry['repo']}: no git mirror at {' or '.join(map(str, candidates))}")
        git = ["git", "--git-dir", str(git_dir)]
        tag = subprocess.run([*git, "rev-parse", "--verify", "--quiet", f"{entry['tag']}^{{commit}}"],
                             capture_output=True, text=True).stdout.strip()
        if tag and tag != entry["commit"]:
            raise RefusedError(f"{entry['repo']}: tag {entry['tag']} is {tag} in {git_dir}, pinned commit is "
                               f"{entry['commit']}; the tag moved upstream, check it before re-pinning")
        shown = subprocess.run([*git, "show", f"{entry['commit']}:{entry['path']}"], capture_output=True)
        if shown.returncode != 0:
            raise RefusedError(f"{entry['repo']}: {entry['commit']}:{entry['path']} is not in {git_dir}: "
                               f"{shown.stderr.decode().strip()}")
        return shown.stdout

    return read


def from_source_dir(root: Path) -> Callable[[Dict[str, Any]], bytes]:
    """Files laid out like their download URL: <root>/<owner>/<name>/<tag>/<path>."""

    def read(entry: Dict[str, Any]) -> bytes:
        path = root / entry["repo"] / entry["tag"] / entry["path"]
        if not path.is_file():
            raise RefusedError(f"{entry['repo']}: {path} does not exist")
        return path.read_bytes()

    return read


def verified(entry: Dict[str, Any], data: bytes) -> bytes:
    actual = sha256(data)
    if actual != entry["upstream_sha256"]:
        raise RefusedError(
            f"{entry['file']}: {entry['repo']} {entry['tag']}:{entry['path']} has sha256 {actual}, "
            f"SOURCES.json pins {entry['upstream_sha256']}. Refusing to convert a file that is not the pinned "
            "release. If you changed the pin on purpose, review the upstream file and record this sha256."
        )
    return data


# --- conversion --------------------------------------------------------------------------------------

def crd_of(data: bytes, source: str) -> Dict[str, Any]:
    crds = [doc for doc in yaml.load_all(data, Loader=Loader) if doc and doc.get("kind") == "CustomResourceDefinition"]
    if len(crds) != 1:
        raise RefusedError(f"{source}: expected one CustomResourceDefinition, found {len(crds)}")
    return crds[0]


def convert(crd: Dict[str, Any], version: str) -> tuple[Dict[str, Any], List[Dict[str, Any]]]:
    """The JSON Schema of one served version of a CRD, and the local changes made to it."""
    group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
    served = {v["name"]: v for v in crd["spec"]["versions"] if v.get("served")}
    if version not in served:
        raise RefusedError(f"{group} {kind}: version {version} is not served by this CRD (served: {sorted(served)})")
    upstream = copy.deepcopy(served[version]["schema"]["openAPIV3Schema"])
    schema: Dict[str, Any] = {"$schema": DRAFT_07, **upstream}
    schema["properties"]["apiVersion"]["enum"] = [f"{group}/{version}"]
    schema["properties"]["kind"]["enum"] = [kind]
    schema["required"] = schema.get("required", []) + [k for k in ("apiVersion", "kind") if k not in schema.get("required", [])]
    schema["x-kubernetes-group-version-kind"] = [{"group": group, "kind": kind, "version": version}]
    changes: List[Dict[str, Any]] = []
    make_portable(schema, "$", changes)
    return schema, changes


def make_portable(node: Any, at: str, changes: List[Dict[str, Any]]) -> None:
    if isinstance(node, list):
        for index, item in enumerate(node):
            make_portable(item, f"{at}[{index}]", changes)
        return
    if not isinstance(node, dict):
        return
    if node.get("nullable") is True and isinstance(node.get("type"), str):
        node["type"] = [node["type"], "null"]  # same key position; `nullable` itself is kept
        changes.append({"kind": "nullable", "at": at})
    pattern = node.get("pattern")
    if isinstance(pattern, str):
        if pattern in PORTABLE_PATTERNS:
            node["pattern"] = PORTABLE_PATTERNS[pattern]
            changes.append({"kind": "pattern", "at": at, "upstream_pattern": pattern, "portable_pattern": node["pattern"]})
        try:
            re.compile(node["pattern"])
        except re.error as error:
            raise RefusedError(f"{at}: pattern {pattern!r} does not compile with Python re ({error}); "
                               "add an equivalent to PORTABLE_PATTERNS in ci/update-crd-schemas.py") from error
    for key, value in node.items():
        make_portable(value, f"{at}.{key}", changes)


# --- the folder ----------------------------------------------------------------------------------------

def regenerate(out: Path, sources: Dict[str, Any], read: Callable[[Dict[str, Any]], bytes]) -> Dict[str, bytes]:
    """Every listed file's new content (path relative to out -> bytes), SOURCES.json included."""
    result: Dict[str, bytes] = {}
    cache: Dict[tuple, Dict[str, Any]] = {}
    new_sources = copy.deepcopy(sources)
    for entry in new_sources["files"]:
        expected_url = RAW_URL.format(**entry)
        if entry["url"] != expected_url:
            raise RefusedError(f"{entry['file']}: url should be {expected_url} (repo, tag and path say so)")
        key = (entry["repo"], entry["commit"], entry["path"])
        if key not in cache:
            cache[key] = crd_of(verified(entry, read(entry)), f"{entry['repo']}:{entry['path']}")
        schema, changes = convert(cache[key], entry["version"])
        names = (cache[key]["spec"]["group"], cache[key]["spec"]["names"]["kind"])
        if names != (entry["group"], entry["kind"]) or entry["file"] != f"{entry['group']}/{entry['kind'].lower()}_{entry['version']}.json":
            raise RefusedError(f"{entry['file']}: the CRD is {names[0]} {names[1]}; group, kind, version and file must agree")
        data = dump(schema)
        entry["sha256"] = sha256(data)
        entry["local_changes"] = changes
        result[entry["file"]] = data
    result[SOURCES] = (json.dumps(new_sources, indent=2) + "\n").encode()
    return result


def stale_files(out: Path, listed: Dict[str, bytes]) -> List[Path]:
    return sorted(p for p in out.glob("*/*.json") if p.relative_to(out).as_posix() not in listed)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--from-git-mirrors", type=Path, metavar="DIR", help="bare git clones named <owner>+<name>")
    where.add_argument("--source-dir", type=Path, metavar="DIR", help="upstream files under DIR/<owner>/<name>/<tag>/<path>")
    parser.add_argument("--sources", type=Path, default=SCHEMAS / SOURCES, help="provenance file (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=SCHEMAS, help="folder to write (default: %(default)s)")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if any file would change")
    args = parser.parse_args(argv)

    read = (from_git_mirrors(args.from_git_mirrors) if args.from_git_mirrors
            else from_source_dir(args.source_dir) if args.source_dir else from_network)
    sources = json.loads(args.sources.read_text())
    try:
        files = regenerate(args.out, sources, read)
    except RefusedError as error:
        print(f"update-crd-schemas: {error}", file=sys.stderr)
        return 2
    changed = [name for name, data in files.items()
               if not (args.out / name).is_file() or (args.out / name).read_bytes() != data]
    stale = stale_files(args.out, files)
    for name in files:
        print(f"{'changed  ' if name in changed else 'identical'} {name}")
    for path in stale:
        print(f"stale     {path.relative_to(args.out)} (not in {SOURCES})")
    if args.check:
        return 1 if changed or stale else 0
    for name in changed:
        (args.out / name).parent.mkdir(parents=True, exist_ok=True)
        (args.out / name).write_bytes(files[name])
    for path in stale:
        path.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
