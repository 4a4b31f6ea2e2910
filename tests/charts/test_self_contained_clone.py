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
from xml.etree import ElementTree

import pytest

from tests.charts import render

# Per upstream schema group, chart tests that render or load objects of that group: (module, test
# class or function). They run in the same pytest process that collects all of tests/charts.
SCHEMA_GROUP_TESTS = {
    "provenance of every upstream schema": ("test_upstream_crd_schemas", "TestCommittedCopies"),
    "KubeRay": ("test_rayservice_schema", "test_both_schemas_reject_broken_objects"),
    "Karpenter": ("test_karpenter_nodepools", "TestEC2NodeClass"),
    "prometheus-operator (PodMonitor, PrometheusRule)": ("test_llm_monitoring", "TestCapabilitiesGate"),
    "prometheus-operator (ServiceMonitor)": ("test_kuberay_operator", "TestServiceMonitor"),
    "Flux": ("test_flux", "TestObjects"),
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


@pytest.fixture(scope="module")
def clone_run(clone) -> subprocess.CompletedProcess:
    """pytest in the clone: collects all of tests/charts, runs the schema group tests (one process,
    since collecting imports the app, the slowest part), and writes a JUnit report of what ran."""
    selected = " or ".join(f"({module} and {test})" for module, test in SCHEMA_GROUP_TESTS.values())
    env = dict(os.environ)
    env["PATH"] = f"{clone / '.tools' / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(clone / "image" / "src")  # the clone's app, not the editable install's
    env.pop("PYTEST_ADDOPTS", None)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "tests/charts",
         "-k", f"({selected}) and not test_self_contained_clone", "--junitxml", str(clone / "junit.xml")],
        cwd=clone, env=env, capture_output=True, text=True, timeout=900,
    )


def report(result: subprocess.CompletedProcess) -> str:
    return f"pytest in a clone with nothing beside it:\n{result.stdout[-6000:]}\n{result.stderr[-2000:]}"


def test_nothing_committed_reads_outside_the_checkout(clone):
    pattern = [arg for text in OUTSIDE_THE_CHECKOUT for arg in ("-e", text)]
    found = subprocess.run(["git", "grep", "-n", "-F", *pattern], cwd=clone, capture_output=True, text=True)
    assert found.returncode == 1 and not found.stdout, f"committed files reach beside the checkout:\n{found.stdout}"


def test_every_chart_test_collects_and_the_selected_ones_pass(clone_run):
    summary = clone_run.stdout.strip().splitlines()[-1] if clone_run.stdout.strip() else ""
    # No collection error, failure, error or skip (a skipped schema test proves nothing).
    assert clone_run.returncode == 0, report(clone_run)
    assert re.fullmatch(r"\d+ passed, \d+ deselected(, \d+ warnings?)? in [\d.]+s( \([\d:]+\))?", summary), report(clone_run)


def test_every_upstream_schema_group_was_exercised(clone, clone_run):
    cases = ElementTree.parse(clone / "junit.xml").getroot().iter("testcase")
    ran = [f"{case.get('classname')}.{case.get('name')}" for case in cases if not list(case)]  # no failure/skip child
    for group, (module, test) in SCHEMA_GROUP_TESTS.items():
        assert any(f"tests.charts.{module}." in name and f".{test}" in name for name in ran), f"no {group} test passed"
