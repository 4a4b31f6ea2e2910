"""What `ct lint` checks, for every chart under charts/, with the same underlying tools.

Charts and their ci/*-values.yaml scenarios are discovered on disk, so a new chart is gated the
moment it exists: helm lint --strict per scenario, yamllint with the project config, the
Chart.yaml schema (yamale), and the version bump against a base ref (ci/check-chart-versions.sh).
ct.yaml points hosted CI's `ct lint` at the same configuration files.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import List, Tuple

import pytest
import yamale
import yaml

from tests.charts import render

REPO = render.REPO
CHART_SCHEMA = REPO / "ci" / "chart_schema.yaml"
YAMLLINT_CONFIG = REPO / ".yamllint.yaml"
VERSION_CHECK = REPO / "ci" / "check-chart-versions.sh"
CT_CONFIG = REPO / "ct.yaml"


def charts() -> List[Path]:
    return sorted(path.parent for path in render.CHARTS.glob("*/Chart.yaml"))


def lint_scenarios() -> List[Tuple[Path, Path | None]]:
    """(chart, values file) for each ci/*-values.yaml; (chart, None) for a chart without any."""
    scenarios: List[Tuple[Path, Path | None]] = []
    for chart in charts():
        values_files = sorted((chart / "ci").glob("*-values.yaml"))
        scenarios += [(chart, values) for values in values_files] or [(chart, None)]
    return scenarios


def scenario_id(scenario: Tuple[Path, Path | None]) -> str:
    chart, values = scenario
    return f"{chart.name}:{values.name if values else 'defaults'}"


def yamllint(*paths: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "yamllint", "--strict", "-c", str(YAMLLINT_CONFIG), *map(str, paths)],
        capture_output=True,
        text=True,
        cwd=REPO,
    )


def test_charts_are_discovered():
    names = {chart.name for chart in charts()}
    assert "llm-serving" in names


@pytest.mark.parametrize("scenario", lint_scenarios(), ids=scenario_id)
def test_helm_lint_strict(scenario):
    chart, values = scenario
    args = ["lint", "--strict", str(chart), "--namespace", "llm"]
    if values is not None:
        args += ["-f", str(values)]
    output = render.helm(*args)
    assert "0 chart(s) failed" in output


def test_yamllint_passes_on_the_repository():
    result = yamllint(Path("."))  # relative, so the config's ignore patterns apply
    assert result.returncode == 0, result.stdout + result.stderr


def test_yamllint_config_rejects_what_it_should(tmp_path: Path):
    # The gate can fail: a duplicate key, a yes/no boolean and a trailing space are all errors.
    bad = tmp_path / "bad.yaml"
    bad.write_text("image:\n  tag: a\n  tag: b\nenabled: yes \n")
    result = yamllint(bad)
    assert result.returncode != 0
    for rule in ("key-duplicates", "truthy", "trailing-spaces"):
        assert rule in result.stdout, result.stdout


def test_yamllint_skips_helm_templates_only():
    ignored = yaml.safe_load(YAMLLINT_CONFIG.read_text())["ignore"].split()
    assert "charts/*/templates/" in ignored
    assert not any(pattern.startswith("values") or pattern == "charts/" for pattern in ignored)


@pytest.mark.parametrize("chart", charts(), ids=lambda path: path.name)
def test_chart_yaml_matches_the_schema(chart: Path):
    schema = yamale.make_schema(str(CHART_SCHEMA))
    data = yamale.make_data(str(chart / "Chart.yaml"))
    yamale.validate(schema, data, strict=True)
    assert data[0][0]["name"] == chart.name, "the chart's name must be its folder's name"


def test_chart_schema_rejects_a_bad_chart_yaml(tmp_path: Path):
    bad = tmp_path / "Chart.yaml"
    bad.write_text("apiVersion: v1\nname: Bad_Name\nversion: '1.0'\ndescription: x\nappversion: '1'\n")
    schema = yamale.make_schema(str(CHART_SCHEMA))
    with pytest.raises(yamale.YamaleError) as error:
        yamale.validate(schema, yamale.make_data(str(bad)), strict=True)
    message = str(error.value)
    for problem in ("apiVersion", "name", "version", "description", "appversion"):
        assert problem in message, message


def test_chart_versions_are_bumped_against_the_base_ref():
    # No-op without a base ref (this checkout may have no remote); hosted CI passes origin/main.
    result = subprocess.run([str(VERSION_CHECK)], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr


class TestVersionCheckScript:
    """ci/check-chart-versions.sh on a scratch git repository with one chart."""

    @pytest.fixture
    def repo(self, tmp_path: Path) -> Path:
        def git(*args: str) -> None:
            subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

        git("init", "-q", "-b", "main")
        git("config", "user.email", "ci@example.invalid")
        git("config", "user.name", "ci")
        chart = tmp_path / "charts" / "demo"
        (chart / "templates").mkdir(parents=True)
        (chart / "ci").mkdir()
        (chart / "Chart.yaml").write_text("apiVersion: v2\nname: demo\nversion: 1.2.3\n")
        (chart / "values.yaml").write_text("replicas: 1\n")
        git("add", ".")
        git("commit", "-q", "-m", "base")
        git("tag", "base")
        self.git = git
        return tmp_path

    def check(self, repo: Path, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(VERSION_CHECK), *args], capture_output=True, text=True, cwd=repo)

    def test_no_base_ref_is_a_noop(self, repo: Path):
        result = self.check(repo)
        assert result.returncode == 0
        assert "no base ref" in result.stdout

    def test_unknown_base_ref_fails(self, repo: Path):
        result = self.check(repo, "no-such-ref")
        assert result.returncode == 2
        assert "not a commit" in result.stderr

    def test_change_without_bump_fails_naming_the_chart(self, repo: Path):
        (repo / "charts/demo/values.yaml").write_text("replicas: 2\n")
        result = self.check(repo, "base")
        assert result.returncode == 1
        assert "charts/demo changed" in result.stderr and "1.2.3 to 1.2.3" in result.stderr

    def test_committed_change_with_bump_passes(self, repo: Path):
        (repo / "charts/demo/values.yaml").write_text("replicas: 2\n")
        (repo / "charts/demo/Chart.yaml").write_text("apiVersion: v2\nname: demo\nversion: 1.2.4\n")
        self.git("commit", "-qam", "change")
        result = self.check(repo, "base")
        assert result.returncode == 0, result.stderr
        assert "1.2.3 -> 1.2.4" in result.stdout

    def test_version_going_down_fails(self, repo: Path):
        (repo / "charts/demo/Chart.yaml").write_text("apiVersion: v2\nname: demo\nversion: 1.2.0\n")
        assert self.check(repo, "base").returncode == 1

    def test_untracked_template_counts_as_a_change(self, repo: Path):
        (repo / "charts/demo/templates/new.yaml").write_text("kind: ConfigMap\n")
        assert self.check(repo, "base").returncode == 1

    def test_ci_scenarios_and_new_charts_need_no_bump(self, repo: Path):
        (repo / "charts/demo/ci/extra-values.yaml").write_text("replicas: 3\n")
        (repo / "charts/other").mkdir()
        (repo / "charts/other/Chart.yaml").write_text("apiVersion: v2\nname: other\nversion: 0.1.0\n")
        result = self.check(repo, "base")
        assert result.returncode == 0, result.stderr
        assert "charts/other is new" in result.stdout


def test_ct_config_points_at_the_same_gates():
    config = yaml.safe_load(CT_CONFIG.read_text())
    assert config["chart-dirs"] == ["charts"]
    assert (REPO / config["chart-yaml-schema"]) == CHART_SCHEMA
    assert (REPO / config["lint-conf"]) == YAMLLINT_CONFIG
    assert config["check-version-increment"] is True
    assert config["target-branch"] == "main"
