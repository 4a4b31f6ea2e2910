"""Which metric names charts/llm-monitoring uses, and which of them a CPU test setup cannot export.

- metric_names_used(): every raw metric name in the dashboards' queries (panel targets and template
  variables) and in the expressions of the PrometheusRule the chart renders (real helm), each with
  the places that use it. Recording rules the chart defines are not raw metrics and are left out;
  the raw metrics their expressions read are included.
- metrics_not_on_cpu(): charts/llm-monitoring/metrics-not-on-cpu.yaml, the names that a CPU test run
  cannot show (GPU-only DCGM metrics, KubeRay operator metrics, ...) with the reason.
- promql_metric_names() / grafana_query_metric_names(): the parsers, usable on any expression.

The names are the series names as Prometheus stores them (`..._bucket`, `..._total`), so they compare
directly with the sample names of a /metrics scrape.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Optional, Set, Tuple

import yaml

from tests.charts import render

CHART = "llm-monitoring"
CHART_DIR = render.CHARTS / CHART
DASHBOARDS_DIR = CHART_DIR / "dashboards"
NOT_ON_CPU_FILE = CHART_DIR / "metrics-not-on-cpu.yaml"
MONITORING_API = "monitoring.coreos.com/v1"

# PromQL words that look like identifiers but are not metric names.
_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool",
    "and", "or", "unless", "offset", "inf", "nan", "atan2",
}
# Keywords followed by a parenthesised list of label names.
_LABEL_LIST_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right"}

_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<comment>\#[^\n]*)
  | (?P<string>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`)
  | (?P<duration>(?:[0-9]+(?:ms|[smhdwy]))+(?![A-Za-z0-9_:]))
  | (?P<number>0[xX][0-9a-fA-F]+|(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)
  | (?P<variable>\$\{[^}]*\}|\$[A-Za-z_][A-Za-z0-9_]*|\[\[[^\]]*\]\])
  | (?P<identifier>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<open_brace>\{)
  | (?P<close_brace>\})
  | (?P<open_bracket>\[)
  | (?P<close_bracket>\])
  | (?P<open_paren>\()
  | (?P<close_paren>\))
  | (?P<operator>==|!=|=~|!~|>=|<=|[-+*/%^<>=,@])
    """,
    re.VERBOSE,
)


class PromQLSyntaxError(ValueError):
    """The expression has a character or bracket the tokenizer does not accept."""


def _tokens(expr: str) -> List[Tuple[str, str]]:
    tokens: List[Tuple[str, str]] = []
    position = 0
    while position < len(expr):
        match = _TOKEN.match(expr, position)
        if not match:
            raise PromQLSyntaxError(f"unexpected {expr[position]!r} at {position} in: {expr}")
        kind = match.lastgroup or ""
        if kind not in ("space", "comment"):
            tokens.append((kind, match.group()))
        position = match.end()
    return tokens


def promql_metric_names(expr: str) -> Set[str]:
    """The metric names a PromQL expression selects (Grafana variables such as $__rate_interval allowed).

    Skipped: function and aggregation names (an identifier followed by "("), keywords, label names in
    by/without/on/ignoring/group_left/group_right lists, label matchers inside {...}, range and
    subquery durations inside [...], strings, numbers and durations.
    """
    tokens = _tokens(expr)
    names: Set[str] = set()
    index = 0
    depth = {"brace": 0, "bracket": 0, "paren": 0}
    while index < len(tokens):
        kind, text = tokens[index]
        if kind == "open_brace":
            depth["brace"] += 1
        elif kind == "close_brace":
            depth["brace"] -= 1
        elif kind == "open_bracket":
            depth["bracket"] += 1
        elif kind == "close_bracket":
            depth["bracket"] -= 1
        elif kind == "open_paren":
            depth["paren"] += 1
        elif kind == "close_paren":
            depth["paren"] -= 1
        if min(depth.values()) < 0:
            raise PromQLSyntaxError(f"unbalanced {text!r} in: {expr}")
        if kind == "identifier" and text == "__name__" and depth["brace"]:
            names.add(_name_matcher_value(tokens, index, expr))
            index += 1
            continue
        if kind != "identifier" or depth["brace"] or depth["bracket"]:
            index += 1
            continue
        following = tokens[index + 1] if index + 1 < len(tokens) else ("", "")
        word = text.lower()
        if word in _LABEL_LIST_KEYWORDS:
            index += 1
            if following[0] == "open_paren":  # skip the label list, parentheses included
                while index < len(tokens) and tokens[index][0] != "close_paren":
                    index += 1
                index += 1
            continue
        # A function or aggregation: `rate(`, `sum(`, or `sum by (...)` / `sum without (...)`.
        aggregation = following[0] == "identifier" and following[1].lower() in ("by", "without")
        if word in _KEYWORDS or following[0] == "open_paren" or aggregation:
            index += 1
            continue
        names.add(text)
        index += 1
    if any(depth.values()):
        raise PromQLSyntaxError(f"unbalanced brackets in: {expr}")
    return names


def _name_matcher_value(tokens: List[Tuple[str, str]], index: int, expr: str) -> str:
    """The metric name of a `{__name__="x"}` matcher; other matchers on __name__ cannot be checked."""
    operator = tokens[index + 1] if index + 1 < len(tokens) else ("", "")
    value = tokens[index + 2] if index + 2 < len(tokens) else ("", "")
    if operator[1] != "=" or value[0] != "string":
        raise PromQLSyntaxError(f"only __name__=\"<name>\" can be resolved to a metric name, in: {expr}")
    return value[1][1:-1]


_GRAFANA_FUNCTION = re.compile(r"^\s*(?P<function>label_values|label_names|metrics|query_result)\s*\((?P<args>.*)\)\s*$", re.S)


def grafana_query_metric_names(query: str) -> Set[str]:
    """Metric names in a Grafana Prometheus template-variable query.

    label_values(<series selector>, <label>) and label_values(<label>), label_names(...),
    metrics(<regex>) and query_result(<PromQL>); anything else is PromQL.
    """
    match = _GRAFANA_FUNCTION.match(query)
    if not match:
        return promql_metric_names(query)
    function, args = match.group("function"), match.group("args")
    if function == "query_result":
        return promql_metric_names(args)
    if function == "metrics":
        return set()
    # label_values / label_names: an optional series selector, then (label_values) a label name.
    selector = _split_top_level_commas(args)
    if function == "label_values":
        selector = selector[:-1]
    return set().union(*(promql_metric_names(part) for part in selector)) if selector else set()


def _split_top_level_commas(text: str) -> List[str]:
    parts, current, depth, quote = [], [], 0, ""
    for char in text:
        if quote:
            current.append(char)
            if char == quote:
                quote = ""
            continue
        if char in "\"'`":
            quote = char
        elif char in "({[":
            depth += 1
        elif char in ")}]":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append("".join(current).strip())
            current = []
            continue
        current.append(char)
    if "".join(current).strip():
        parts.append("".join(current).strip())
    return parts


# ------------------------------------------------------------------------------------------- sources

def dashboard_queries(path: Path) -> Iterator[Tuple[str, str, str]]:
    """(where, kind, query) for every panel target and template variable of a dashboard file.

    kind is "promql" for panel targets and "grafana-variable" for variable queries.
    """
    dashboard = json.loads(path.read_text())

    def panels(items: Iterable[Dict[str, Any]]) -> Iterator[Dict[str, Any]]:
        for panel in items:
            yield panel
            yield from panels(panel.get("panels", []))  # panels inside collapsed rows

    for panel in panels(dashboard.get("panels", [])):
        for target in panel.get("targets", []):
            if target.get("expr"):
                yield f"dashboard {path.name}: panel {panel.get('id')} {panel.get('title')!r}", "promql", target["expr"]
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") != "query":
            continue
        query = variable.get("query")
        if isinstance(query, dict):
            query = query.get("query", "")
        if query:
            yield f"dashboard {path.name}: variable {variable.get('name')}", "grafana-variable", query


def dashboard_files() -> List[Path]:
    return sorted(DASHBOARDS_DIR.glob("*.json"))


def rendered_rule_groups(
    values: Optional[Dict[str, Any]] = None, values_files: Iterable[Path] = ()
) -> List[Dict[str, Any]]:
    """The rule groups of the PrometheusRule the chart renders (real helm, validated against the CRD)."""
    objects = render.render_chart(
        CHART, values=values, values_files=values_files, api_versions=[MONITORING_API],
        show_only=["templates/prometheusrule.yaml"],
    )
    return render.one(objects, "PrometheusRule")["spec"]["groups"]


def rule_queries(groups: List[Dict[str, Any]]) -> Iterator[Tuple[str, str, str]]:
    for group in groups:
        for rule in group["rules"]:
            if "record" in rule:
                yield f"rule group {group['name']}: record {rule['record']}", "promql", str(rule["expr"])
            else:
                yield f"rule group {group['name']}: alert {rule['alert']}", "promql", str(rule["expr"])


def recorded_names(groups: List[Dict[str, Any]]) -> Set[str]:
    return {rule["record"] for group in groups for rule in group["rules"] if "record" in rule}


def metric_names_used(
    values: Optional[Dict[str, Any]] = None, values_files: Iterable[Path] = ()
) -> Dict[str, Set[str]]:
    """Raw metric name -> the places (dashboard panel/variable, rule) that use it.

    Rules are those of the chart rendered with the given values (default: the chart's defaults, in
    which every alert is enabled).
    """
    groups = rendered_rule_groups(values, values_files)
    recorded = recorded_names(groups)
    used: Dict[str, Set[str]] = defaultdict(set)
    queries = list(rule_queries(groups))
    for path in dashboard_files():
        queries.extend(dashboard_queries(path))
    for where, kind, query in queries:
        names = grafana_query_metric_names(query) if kind == "grafana-variable" else promql_metric_names(query)
        for name in names - recorded:
            used[name].add(where)
    return dict(used)


def metrics_not_on_cpu() -> Dict[str, Dict[str, str]]:
    """metrics-not-on-cpu.yaml: metric name -> {source, reason}."""
    return yaml.safe_load(NOT_ON_CPU_FILE.read_text())["metrics"]
