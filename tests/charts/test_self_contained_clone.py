"""The repository is self-contained: a clone of what is committed, alone in an empty folder, collects
every chart test and passes the ones that validate against each upstream CRD schema group.

Only the installed tools are shared with the clone (.venv's Python, .tools/bin/helm through a
symlink), as a CI runner has them after `make test`'s setup. HEAD is what is cloned: in CI the
work tree is HEAD; in a work tree with uncommitted changes, commit before relying on this test.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.charts import render

# One test class or file per upstream schema group, each rendering or loading objects of that group.
SCHEMA_GROUP_TESTS = {
    "provenance of every upstream schema": "tests/charts/test_upstream_crd_schemas.py",
    "KubeRay": "tests/charts/test_rayservice_schema.py::test_both_schemas_reject_broken_objects",
    "Karpenter": "tests/charts/test_karpenter_nodepools.py::TestEC2NodeClass",
    "prometheus-operator (PodMonitor, PrometheusRule)": "tests/charts/test_llm_monitoring.py::TestCapabilitiesGate",
    "prometheus-operator (ServiceMonitor)": "tests/charts/test_kuberay_operator.py::TestServiceMonitor",
    "Flux": "tests/charts/test_flux.py::TestObjects",
}
# Written in pieces so this file does not match itself.
OUTSIDE_THE_CHECKOUT = [".." + "/shared", 'parent / "' + 'shared"']


def git(*args: str, cwd: Path) -> str:
    result = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    assert result.returncode == 0, f"git {' '.join(args)}: {result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    """HEAD of this repository, checked out in a fresh folder that has nothing beside it."""
    alone = tmp_path_factory.mktemp("alone")
    clone = alone / "repo"
    head = git("rev-parse", "HEAD", cwd=render.REPO).strip()
    git("clone", "--quiet", "--no-checkout", str(render.REPO), str(clone), cwd=alone)
    git("-c", "advice.detachedHead=false", "checkout", "--quiet", head, cwd=clone)
    assert list(alone.iterdir()) == [clone]
    (clone / ".tools").symlink_to(render.REPO / ".tools", target_is_directory=True)
    return clone


def pytest_in(clone: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PATH"] = f"{clone / '.tools' / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(clone / "image" / "src")  # the clone's app, not the editable install's
    env.pop("PYTEST_ADDOPTS", None)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", *args],
        cwd=clone, env=env, capture_output=True, text=True, timeout=600,
    )


def test_nothing_committed_reads_outside_the_checkout(clone):
    pattern = [arg for text in OUTSIDE_THE_CHECKOUT for arg in ("-e", text)]
    found = subprocess.run(["git", "grep", "-n", "-F", *pattern], cwd=clone, capture_output=True, text=True)
    assert found.returncode == 1 and not found.stdout, f"committed files reach beside the checkout:\n{found.stdout}"


def test_every_chart_test_collects_in_the_clone(clone):
    result = pytest_in(clone, "--collect-only", "tests/charts")
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    assert result.returncode == 0 and re.fullmatch(r"\d+ tests? collected in [\d.]+s", summary), (
        f"collection failed in a clone with nothing beside it:\n{result.stdout[-4000:]}\n{result.stderr[-2000:]}"
    )


def test_chart_tests_of_every_upstream_schema_group_pass_in_the_clone(clone):
    result = pytest_in(clone, *SCHEMA_GROUP_TESTS.values())
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    # Every selected test passed: no failure, error or skip (a skipped schema test proves nothing).
    assert result.returncode == 0 and re.fullmatch(r"\d+ passed(, \d+ warnings?)? in [\d.]+s( \([\d:]+\))?", summary), (
        f"chart tests failed in a clone with nothing beside it:\n{result.stdout[-6000:]}\n{result.stderr[-2000:]}"
    )
