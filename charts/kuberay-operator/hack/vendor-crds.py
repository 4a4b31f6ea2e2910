#!/usr/bin/env python3
"""Vendor the ray.io CRDs of the pinned KubeRay release into files/crds/ (crds.source=bundled).

files/crds/SOURCES.json pins each CRD to an upstream repository, release tag, tag commit, path, the
git blob and the sha256 of the upstream YAML. This script reads each YAML, refuses it unless its
sha256 is the pinned one, writes files/crds/ray.io_<plural>.yaml.gz (gzip level 9, no name, mtime
0: the same input gives the same bytes) and records the .gz's sha256 in SOURCES.json as
gzip_sha256, which the chart checks at render time (templates/validate.yaml).

    hack/vendor-crds.py                          # download each pinned url (raw.githubusercontent.com)
    hack/vendor-crds.py --from-git-mirror DIR    # read `git show <commit>:<path>` from a bare clone
    hack/vendor-crds.py --check                  # write nothing; exit 1 unless the files match the pins

Run it where there is egress (a workstation, CI before `helm package`): the packaged chart then
carries the CRDs, and the cluster needs none. To pin a new KubeRay release, change tag, commit and
the paths/urls/git blobs in SOURCES.json, put the sha256 of each upstream file you checked into
upstream_sha256, and run the script. Standard library only.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any, Dict

CRDS = Path(__file__).resolve().parents[1] / "files" / "crds"
SOURCES = CRDS / "SOURCES.json"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def gzip_bytes(data: bytes) -> bytes:
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, compresslevel=9, mtime=0) as out:
        out.write(data)
    return buffer.getvalue()


def upstream(entry: Dict[str, Any], sources: Dict[str, Any], mirror: Path | None) -> bytes:
    if mirror is not None:
        return subprocess.run(
            ["git", "--git-dir", str(mirror), "show", f"{sources['commit']}:{entry['path']}"],
            check=True, capture_output=True,
        ).stdout
    with urllib.request.urlopen(entry["url"], timeout=60) as response:
        return response.read()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--from-git-mirror", type=Path, help="a bare git clone of the upstream repository")
    parser.add_argument("--check", action="store_true", help="verify files/crds/ against SOURCES.json, write nothing")
    args = parser.parse_args()
    sources = json.loads(SOURCES.read_text())
    failures = []
    for entry in sources["files"]:
        target = CRDS / entry["file"]
        if args.check:
            if not target.exists():
                failures.append(f"{target.name}: missing")
                continue
            data = target.read_bytes()
            if sha256(data) != entry.get("gzip_sha256"):
                failures.append(f"{target.name}: sha256 {sha256(data)} is not the pinned gzip_sha256")
            if sha256(gzip.decompress(data)) != entry["upstream_sha256"]:
                failures.append(f"{target.name}: the YAML inside is not the pinned upstream file")
            continue
        yaml_bytes = upstream(entry, sources, args.from_git_mirror)
        if sha256(yaml_bytes) != entry["upstream_sha256"]:
            failures.append(f"{entry['path']}@{sources['tag']}: sha256 {sha256(yaml_bytes)}, pinned {entry['upstream_sha256']}")
            continue
        packed = gzip_bytes(yaml_bytes)
        target.write_bytes(packed)
        entry["gzip_sha256"] = sha256(packed)
        print(f"{target.name}: {len(yaml_bytes)} bytes of YAML, {len(packed)} gzipped")
    if not args.check and not failures:
        SOURCES.write_text(json.dumps(sources, indent=2) + "\n")
    for failure in failures:
        print(failure, file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
