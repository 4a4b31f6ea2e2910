"""What the chart's documentation shows works with the real code: the keys document parses with the
app's own parser, and every profile or file the READMEs point at exists."""

from __future__ import annotations

import re

import yaml

from llm_serving.gateway.api_keys import parse_keys_document
from tests.charts import render
from tests.charts.llm_serving_chart import CHART_DIR, PROFILES

CHART_README = (CHART_DIR / "README.md").read_text()
VALUES_README = (render.VALUES / "README.md").read_text()


def test_the_keys_document_example_is_what_the_app_reads():
    section = CHART_README.split("## API keys", 1)[1]
    example = re.search(r"```yaml\n(.*?)```", section, flags=re.S).group(1)
    keys = parse_keys_document(example, "README example")
    assert [key.name for key in keys] == ["team-a", "team-b"]
    assert keys[0].may_use("llama-3.1-8b-instruct") and not keys[0].may_use("other")


def test_the_ci_keys_document_is_what_the_app_reads():
    workflow = yaml.safe_load((render.REPO / ".github" / "workflows" / "charts.yaml").read_text())
    step = next(s["run"] for s in workflow["jobs"]["install"]["steps"] if "keys.yaml" in s.get("run", ""))
    document = re.search(r"printf '(.*?)'", step).group(1).encode().decode("unicode_escape")
    assert [key.name for key in parse_keys_document(document, "CI keys")] == ["ci"]


def test_values_readme_lists_exactly_the_profiles():
    listed = set(re.findall(r"^\| \[`([^`]+)`\]", VALUES_README, flags=re.M))
    assert listed == {profile.name for profile in render.VALUES.glob("*.yaml")}  # batch profiles too


def test_readme_links_and_profiles_exist():
    for profile in re.findall(r"values/([\w.-]+\.yaml)", CHART_README):
        assert (render.VALUES / profile).exists(), profile
    for link in re.findall(r"\]\((\.\./[^)#]+)\)", CHART_README):
        assert (CHART_DIR / link).resolve().exists(), link
