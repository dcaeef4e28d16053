"""The alert rules (deploy/prometheus/) and the Grafana dashboard (deploy/grafana/)
ask only for what the code exposes: every PromQL expression parses
(``promql_parser``, as promtool is not installable here) and every metric it
names is one that ``LoaderMetrics``, ``GatewayMetrics``, ``SloMetrics`` or
``describe_types`` registers, with the suffixes prometheus_client gives it.
Every rule's runbook is a heading of docs/monitoring.md.

The checks are functions that return a list of problems, so that the last tests
can feed them a made-up metric and see it reported: they cannot pass vacuously.
"""

from __future__ import annotations

import functools
import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import promql_parser
import yaml
from prometheus_client import CollectorRegistry

from hourglass.config import Settings
from hourglass.gateway.metrics import GatewayMetrics
from hourglass.loader.metrics import LoaderMetrics
from hourglass.loader.slo import describe_types
from hourglass.monitor.metrics import SloMetrics

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "hourglass-rules.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "hourglass.json"
DOC = ROOT / "docs" / "monitoring.md"

# The series prometheus_client writes for a family, by its type: derived from
# the type because a labelled metric with no children yet has no samples.
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "gaugehistogram": ("_bucket", "_gcount", "_gsum"),
    "summary": ("", "_count", "_sum", "_created"),
    "info": ("_info",),
    "gauge": ("",),
    "stateset": ("",),
    "unknown": ("",),
}
SEVERITIES = {"page", "ticket"}
RULE_KEYS = {"alert", "expr", "for", "labels", "annotations"}
ANNOTATIONS = {"summary", "description", "runbook"}
DURATION = re.compile(r"^((\d+)y)?((\d+)w)?((\d+)d)?((\d+)h)?((\d+)m)?((\d+)s)?((\d+)ms)?$")
# What Grafana's variables stand for while an expression is parsed.
VARIABLES = {"type": ".*", "__rate_interval": "5m", "__interval": "1m", "__range": "1h"}
VARIABLE = re.compile(r"\$\{([A-Za-z_]\w*)(?::\w+)?\}|\$([A-Za-z_]\w*)")
DATASOURCE_UIDS = {"${DS_PROMETHEUS}", "$DS_PROMETHEUS"}
LABEL_VALUES = re.compile(r"^label_values\((\w+),\s*(\w+)\)$")
UNNAMED = "<a selector without a metric name>"


def exposed(registry: CollectorRegistry) -> set[str]:
    names: set[str] = set()
    for family in registry.collect():
        names.update(family.name + suffix for suffix in SUFFIXES[family.type])
        names.update(sample.name for sample in family.samples)
    return names


@functools.cache
def known_metrics() -> frozenset[str]:
    types = CollectorRegistry()
    describe_types(types, Settings(), [])
    registries = [
        LoaderMetrics().registry,
        GatewayMetrics().registry,
        SloMetrics().registry,
        types,
    ]
    return frozenset(name for registry in registries for name in exposed(registry))


def _selector_name(node: promql_parser.VectorSelector) -> str:
    if node.name:
        return node.name
    for matcher in node.matchers.matchers:
        if matcher.name == "__name__" and matcher.op == promql_parser.MatchOp.Equal:
            return matcher.value
    return UNNAMED


def metric_names(expr: str) -> set[str]:
    """Every metric an expression selects (raises ValueError if it does not parse)."""
    names: set[str] = set()

    def visit(node: promql_parser.Expr) -> None:
        if isinstance(node, promql_parser.MatrixSelector):
            names.add(_selector_name(node.vector_selector))
        elif isinstance(node, promql_parser.VectorSelector):
            names.add(_selector_name(node))

    promql_parser.walk(promql_parser.parse(expr), visit)
    return names


def expr_problems(where: str, expr: str) -> list[str]:
    try:
        names = metric_names(expr)
    except ValueError as exc:
        return [f"{where}: does not parse ({exc}): {expr}"]
    unknown = sorted(names - known_metrics())
    return [f"{where}: no such metric {name}" for name in unknown]


def grafana_expr(where: str, expr: str) -> tuple[str, list[str]]:
    """``expr`` with Grafana's variables replaced by values PromQL accepts."""
    problems: list[str] = []

    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in VARIABLES:
            problems.append(f"{where}: unknown variable ${name}")
            return match.group(0)
        return VARIABLES[name]

    return VARIABLE.sub(value, expr), problems


def valid_duration(text: object) -> bool:
    if not isinstance(text, str) or not text or not DURATION.match(text):
        return False
    try:
        return promql_parser.parse_duration(text).total_seconds() > 0
    except ValueError:
        return False


def rule_problems(doc: Any) -> list[str]:
    problems: list[str] = []
    groups = doc.get("groups") if isinstance(doc, dict) else None
    if not isinstance(groups, list) or not groups:
        return ["no groups"]
    alerts: Counter[str] = Counter()
    group_names: Counter[str] = Counter()
    for group in groups:
        group_names[group.get("name", "")] += 1
        rules = group.get("rules")
        if not isinstance(rules, list) or not rules:
            problems.append(f"group {group.get('name')!r}: no rules")
            continue
        for rule in rules:
            name = str(rule.get("alert", "?"))
            alerts[name] += 1
            if missing := RULE_KEYS - rule.keys():
                problems.append(f"{name}: missing {sorted(missing)}")
                continue
            if extra := rule.keys() - RULE_KEYS:
                problems.append(f"{name}: unexpected {sorted(extra)}")
            if rule["labels"].get("severity") not in SEVERITIES:
                problems.append(f"{name}: severity {rule['labels'].get('severity')!r}")
            if not valid_duration(rule["for"]):
                problems.append(f"{name}: for {rule['for']!r} is not a positive duration")
            annotations = rule["annotations"]
            if missing := ANNOTATIONS - annotations.keys():
                problems.append(f"{name}: annotations missing {sorted(missing)}")
            elif not all(isinstance(annotations[k], str) and annotations[k] for k in ANNOTATIONS):
                problems.append(f"{name}: an empty annotation")
            problems += expr_problems(name, str(rule["expr"]))
    problems += [f"alert {a} defined {n} times" for a, n in alerts.items() if n > 1]
    problems += [f"group {g!r} defined {n} times" for g, n in group_names.items() if n > 1]
    return problems


def _all_panels(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for panel in panels:
        out.append(panel)
        out += _all_panels(panel.get("panels", []))  # a collapsed row holds its panels
    return out


def _template_problems(templating: list[dict[str, Any]]) -> list[str]:
    problems: list[str] = []
    variables = {v.get("name"): v for v in templating}
    source = variables.get("DS_PROMETHEUS", {})
    if source.get("type") != "datasource" or source.get("query") != "prometheus":
        problems.append("no datasource variable DS_PROMETHEUS of query prometheus")
    kind = variables.get("type")
    if kind is None:
        return [*problems, "no variable type"]
    query = kind.get("query")
    text = query.get("query") if isinstance(query, dict) else query
    match = LABEL_VALUES.match(str(text))
    if not match or match.groups() != ("hourglass_type_info", "type"):
        problems.append(f"variable type: query {text!r}")
    elif match.group(1) not in known_metrics():
        problems.append(f"variable type: no such metric {match.group(1)}")
    if not (kind.get("multi") and kind.get("includeAll")):
        problems.append("variable type: not multi with All")
    if kind.get("datasource", {}).get("uid") not in DATASOURCE_UIDS:
        problems.append("variable type: datasource is not the DS_PROMETHEUS variable")
    return problems


def _panel_problems(panel: dict[str, Any]) -> list[str]:
    where = f"panel {panel.get('id')} {panel.get('title')!r}"
    problems: list[str] = []
    if not panel.get("title") or not panel.get("description"):
        problems.append(f"{where}: no title or description")
    if "gridPos" not in panel:
        problems.append(f"{where}: no gridPos")
    if panel.get("type") == "row":
        return problems
    if panel.get("datasource", {}).get("uid") not in DATASOURCE_UIDS:
        problems.append(f"{where}: datasource is not the DS_PROMETHEUS variable")
    targets = panel.get("targets") or []
    if not targets:
        problems.append(f"{where}: no targets")
    refs = Counter(target.get("refId") for target in targets)
    if None in refs or any(n > 1 for n in refs.values()):
        problems.append(f"{where}: refIds {dict(refs)}")
    for target in targets:
        if not target.get("expr"):
            problems.append(f"{where} {target.get('refId')}: no expr")
            continue
        expr, unknown = grafana_expr(where, target["expr"])
        problems += unknown or expr_problems(f"{where} {target.get('refId')}", expr)
    return problems


def dashboard_problems(doc: Any) -> list[str]:
    problems: list[str] = []
    if not isinstance(doc.get("schemaVersion"), int) or doc["schemaVersion"] < 36:
        problems.append(f"schemaVersion {doc.get('schemaVersion')!r}")
    if not doc.get("title") or not doc.get("uid"):
        problems.append("the dashboard has no title or uid")
    problems += _template_problems(doc.get("templating", {}).get("list", []))
    panels = _all_panels(doc.get("panels", []))
    if not panels:
        problems.append("no panels")
    ids = Counter(panel.get("id") for panel in panels)
    problems += [f"panel id {i} used {n} times" for i, n in ids.items() if n > 1]
    for panel in panels:
        problems += _panel_problems(panel)
    return problems


def slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def doc_anchors(text: str) -> set[str]:
    anchors: set[str] = set()
    fenced = False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and (m := re.match(r"^#{1,6} (.+)$", line)):
            anchors.add(slug(m.group(1)))
    return anchors


def rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def test_the_metric_names_come_from_the_code_with_their_suffixes() -> None:
    known = known_metrics()
    # labelled and still without children: named from the family's type
    assert {
        "hourglass_slo_close_delay_seconds_bucket",
        "hourglass_loader_files_written_total",
        "hourglass_type_info",
        "hourglass_request_seconds_count",
        "hourglass_gateway_heartbeat_failures_total",
    } <= known
    assert "hourglass_loader_files_written" not in known  # a counter has no bare series


def test_the_rules_are_well_formed_and_name_only_metrics_the_code_exposes() -> None:
    assert rule_problems(yaml.safe_load(RULES.read_text())) == []


def test_the_rules_cover_what_issue_16_asks_to_alert_on() -> None:
    named = set().union(*(metric_names(rule["expr"]) for rule in rules()))
    assert {
        "hourglass_slo_overdue_buckets",
        "hourglass_type_info",
        "hourglass_slo_last_bucket_completeness_ratio",
        "hourglass_slo_lag_seconds",
        "hourglass_loader_lag_messages",
        "hourglass_stream_unconsumed_bytes",
        "hourglass_stream_budget_bytes",
        "hourglass_loader_dedup_window_seconds",
        "hourglass_loader_dedup_window_configured_seconds",
        "hourglass_gateway_lease_renewed_timestamp_seconds",
        "hourglass_gateway_heartbeat_failures_total",
        "hourglass_slo_refresh_timestamp_seconds",
        "hourglass_slo_refresh_errors_total",
        "hourglass_loader_lake_full",
        "hourglass_loader_quarantine_bytes",
        "hourglass_loader_owned",
        "hourglass_loader_compaction_backlog_buckets",
        "hourglass_bus_connected",
        "hourglass_requests_total",
    } <= named
    tier1 = [r for r in rules() if 'hourglass_type_info{tier="1"}' in r["expr"]]
    assert tier1 and all(r["labels"]["severity"] == "page" for r in tier1)
    assert all("group_left(owner, tier)" in r["expr"] for r in tier1)


def test_every_runbook_is_a_heading_of_monitoring_md_and_every_alert_is_in_its_table() -> None:
    text = DOC.read_text()
    anchors = doc_anchors(text)
    assert {"alert-rules", "grafana", "loading-the-rules"} <= anchors
    assert "the-dashboard-and-the-slo-metrics" in anchors
    for rule in rules():
        page, _, anchor = rule["annotations"]["runbook"].partition("#")
        assert page == "docs/monitoring.md", rule["alert"]
        assert anchor in anchors, rule["alert"]
        assert f"| `{rule['alert']}` |" in text, rule["alert"]


def test_the_dashboard_is_well_formed_and_names_only_metrics_the_code_exposes() -> None:
    assert dashboard_problems(json.loads(DASHBOARD.read_text())) == []


def test_the_checks_report_a_made_up_metric_and_a_broken_expression() -> None:
    rule = {
        "alert": "Made",
        "expr": "hourglass_no_such_metric > 0",
        "for": "5m",
        "labels": {"severity": "page"},
        "annotations": {"summary": "s", "description": "d", "runbook": "r"},
    }
    problems = rule_problems({"groups": [{"name": "g", "rules": [rule]}]})
    assert problems == ["Made: no such metric hourglass_no_such_metric"]
    for expr, name in [
        ("rate(hourglass_no_such_total[5m])", "hourglass_no_such_total"),
        ("max_over_time(hourglass_loader_owned_x[1h:1m])", "hourglass_loader_owned_x"),
        ('{__name__="hourglass_nope"} * on(type) group_left hourglass_type_info', "hourglass_nope"),
        ('absent({job="x"})', UNNAMED),
    ]:
        assert expr_problems("e", expr) == [f"e: no such metric {name}"], expr
    assert expr_problems("e", "sum by (le) (rate(hourglass_request_seconds_bucket[5m]))") == []
    assert "does not parse" in expr_problems("e", "hourglass_loader_owned >")[0]
    bad = {**rule, "expr": "hourglass_loader_owned == 0", "for": "soon"}
    bad["labels"] = {"severity": "urgent"}
    assert len(rule_problems({"groups": [{"name": "g", "rules": [bad, bad]}]})) == 5

    dashboard = json.loads(DASHBOARD.read_text())
    panel = next(p for p in dashboard["panels"] if p.get("targets"))
    panel["targets"][0]["expr"] = "rate(hourglass_no_such_metric[$__rate_interval])"
    panel["targets"].append({"refId": "Z", "expr": "hourglass_loader_owned{stream=~'$typo'}"})
    assert [p.rsplit(": ", 1)[1] for p in dashboard_problems(dashboard)] == [
        "no such metric hourglass_no_such_metric",
        "unknown variable $typo",
    ]
