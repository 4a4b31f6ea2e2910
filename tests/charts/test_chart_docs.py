"""Every chart's README values table is what ci/gen_chart_readme.py writes: one generator, one
format (the `# --` comments of values.yaml plus the types of values.schema.json) for all charts."""

from __future__ import annotations

import difflib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.charts import render

sys.path.insert(0, str(render.REPO / "ci"))
import gen_chart_readme  # noqa: E402

GENERATOR = render.REPO / "ci" / "gen_chart_readme.py"
CHARTS = sorted(path.parent for path in render.CHARTS.glob("*/Chart.yaml"))


def check(*charts: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(GENERATOR), "--check", *map(str, charts)], capture_output=True, text=True)


@pytest.mark.parametrize("chart", CHARTS, ids=lambda path: path.name)
def test_readme_is_what_the_generator_writes(chart: Path):
    current = (chart / "README.md").read_text()
    generated = gen_chart_readme.render_readme(chart)
    diff = "\n".join(difflib.unified_diff(current.splitlines(), generated.splitlines(), "README.md", "generated", lineterm="", n=1))
    assert current == generated, f"{diff}\nrun: .venv/bin/python ci/gen_chart_readme.py"


def copy_chart(chart: Path, tmp_path: Path) -> Path:
    copy = tmp_path / chart.name
    copy.mkdir()
    for name in ("Chart.yaml", "values.yaml", "values.schema.json", "README.md"):
        shutil.copy(chart / name, copy / name)
    return copy


def test_check_notices_a_hand_edited_table(tmp_path: Path):
    chart = copy_chart(render.CHARTS / "kuberay-operator", tmp_path)
    assert check(chart).returncode == 0
    readme = chart / "README.md"
    readme.write_text(readme.read_text().replace("| `replicas` | integer | `2` |", "| `replicas` | integer | `3` |"))
    result = check(chart)
    assert result.returncode == 1 and "out of date" in result.stderr


def test_check_notices_a_new_values_key(tmp_path: Path):
    chart = copy_chart(render.CHARTS / "karpenter-nodepools", tmp_path)
    values = chart / "values.yaml"
    values.write_text(values.read_text() + "# -- A key added without regenerating the README.\nnewKey: 1\n")
    assert check(chart).returncode == 1
    gen_chart_readme.main([str(chart)])
    assert "| `newKey` | integer | `1` | A key added without regenerating the README. |" in (chart / "README.md").read_text()


def test_a_readme_without_the_values_table_is_refused(tmp_path: Path):
    chart = copy_chart(render.CHARTS / "llm-monitoring", tmp_path)
    readme = chart / "README.md"
    readme.write_text(readme.read_text().split("<!-- values-table:start -->")[0])
    result = check(chart)
    assert result.returncode != 0 and "has no values table markers" in result.stderr
