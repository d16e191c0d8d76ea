"""Helpers shared by the monitoring tests: load the repo's Grafana dashboards, turn their queries
into plain PromQL, and pick PromQL apart far enough to check metric names and label matchers."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
DASHBOARD_DIR = REPO_ROOT / "grafana" / "dashboards"
CONTRACT = REPO_ROOT / "docs" / "CONTRACT.md"

# Panels name their datasource through the dashboard variable `datasource` (type datasource,
# Prometheus): Istio's Grafana addon provisions its Prometheus without a fixed uid.
DATASOURCE_UID = "${datasource}"
# uid of the datasource in grafana/provisioning/datasources/prometheus.yml (local Grafana).
LOCAL_DATASOURCE_UID = "prometheus"

# Values for Grafana's variables: good enough to parse (static tests) and to select both local
# services (live test). Dashboards may use no other variables.
STATIC_VARIABLES = {
    "app": "user-svc|order-svc",
    "view": ".+",
    "__rate_interval": "1m",
    "__interval": "15s",
    "__range": "1h",
}


def load_dashboards() -> dict[str, dict]:
    """{file stem: dashboard JSON} for every grafana/dashboards/*.json."""
    return {path.stem: json.loads(path.read_text()) for path in sorted(DASHBOARD_DIR.glob("*.json"))}


def iter_panels(dashboard: dict):
    """Yield (row title or None, panel) for every non-row panel, in expanded or collapsed rows."""
    row_title = None
    for panel in dashboard.get("panels", []):
        if panel.get("type") == "row":
            row_title = panel.get("title", "")
            for inner in panel.get("panels", []):  # a collapsed row keeps its panels inside
                yield row_title, inner
            continue
        yield row_title, panel


def iter_targets(dashboard: dict):
    """Yield (row title, panel, target) for every query target."""
    for row_title, panel in iter_panels(dashboard):
        for target in panel.get("targets", []):
            yield row_title, panel, target


def is_kubernetes_row(row_title: str | None) -> bool:
    """Rows holding panels that only have data on a cluster say so in their title: "needs a cluster"."""
    return bool(row_title) and "needs a cluster" in row_title.lower()


_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\[\[(\w+)(?::\w+)?\]\]|\$(\w+)")


def variables_in(text: str) -> set[str]:
    return {next(g for g in m.groups() if g) for m in _VARIABLE.finditer(text)}


def substitute(text: str, values: dict[str, str] | None = None) -> str:
    """Replace Grafana variables ($job, ${job}, ${job:regex}, [[job]], $__rate_interval, ...)."""
    values = STATIC_VARIABLES if values is None else values

    def repl(match: re.Match) -> str:
        name = next(g for g in match.groups() if g)
        if name not in values:
            raise KeyError(f"no test value for Grafana variable ${name} in {text!r}")
        return values[name]

    return _VARIABLE.sub(repl, text)


_LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(?:(.+),\s*)?(\w+)\s*\)\s*$", re.S)


def variable_query_as_promql(query: str) -> str | None:
    """`label_values(metric{...}, label)` -> an equivalent PromQL expression (None if no metric)."""
    match = _LABEL_VALUES.match(query)
    if not match:
        raise ValueError(f"unsupported variable query {query!r} (use label_values(metric, label))")
    selector, label = match.groups()
    return f"group by ({label}) ({selector})" if selector else None


def variable_queries(dashboard: dict) -> list[str]:
    queries = []
    for var in dashboard.get("templating", {}).get("list", []):
        if var.get("type") != "query":
            continue
        query = var.get("query")
        queries.append(query["query"] if isinstance(query, dict) else query)
    return queries


# --- a small PromQL scanner ---------------------------------------------------------------------

_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<string>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`)
  | (?P<number>[0-9][0-9a-zA-Z_.]*|\.[0-9]+)
  | (?P<ident>[a-zA-Z_:][a-zA-Z0-9_:]*)
  | (?P<op>=~|!~|!=|==|>=|<=|[-+*/%^<>=,(){}\[\]@])
    """,
    re.X,
)

AGGREGATIONS = {
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
}
KEYWORDS = AGGREGATIONS | {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "atan2",
    "inf",
    "nan",
    "start",
    "end",
}
LABEL_LIST_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right"}


def tokenize(expr: str) -> list[tuple[str, str]]:
    tokens, pos = [], 0
    while pos < len(expr):
        match = _TOKEN.match(expr, pos)
        if not match:
            raise ValueError(f"cannot scan PromQL at {expr[pos : pos + 20]!r} in {expr!r}")
        pos = match.end()
        if match.lastgroup != "space":
            tokens.append((match.lastgroup, match.group()))
    return tokens


@dataclass
class Selector:
    metric: str | None
    matchers: list[tuple[str, str, str]]  # (label, operator, value without quotes)

    def values(self, label: str) -> list[tuple[str, str]]:
        return [(op, value) for name, op, value in self.matchers if name == label]


def selectors(expr: str) -> list[Selector]:
    """Every vector selector of the expression (metric name and label matchers)."""
    tokens = tokenize(expr)
    result: list[Selector] = []
    i = 0
    while i < len(tokens):
        kind, text = tokens[i]
        nxt = tokens[i + 1][1] if i + 1 < len(tokens) else None
        if kind == "ident" and text in LABEL_LIST_KEYWORDS and nxt == "(":
            i = tokens.index((("op", ")")), i) + 1  # skip the label list
            continue
        if text == "[":  # range or subquery: durations only
            i = tokens.index(("op", "]"), i) + 1
            continue
        if kind == "ident" and text not in KEYWORDS and nxt != "(":
            matchers, i = _matchers(tokens, i + 1) if nxt == "{" else ([], i + 1)
            result.append(Selector(text, matchers))
            continue
        if text == "{":  # selector without a metric name
            matchers, i = _matchers(tokens, i)
            names = [v for n, op, v in matchers if n == "__name__" and op == "="]
            result.append(Selector(names[0] if names else None, matchers))
            continue
        i += 1
    return result


def _matchers(tokens, i):
    assert tokens[i][1] == "{"
    i += 1
    matchers = []
    while tokens[i][1] != "}":
        if tokens[i][1] == ",":
            i += 1
            continue
        (_, label), (_, op), (kind, value) = tokens[i : i + 3]
        if kind != "string":
            raise ValueError(f"matcher value is not a string: {label}{op}{value}")
        matchers.append((label, op, value[1:-1]))
        i += 3
    return matchers, i + 1


def metric_names(expr: str) -> set[str]:
    return {sel.metric for sel in selectors(expr) if sel.metric}


def contract_metric_names() -> set[str]:
    """Metric names docs/CONTRACT.md promises, with the series a histogram implies, plus `up`."""
    text = CONTRACT.read_text()
    section = text.split("\nMetrics", 1)[1].split("\n- Prometheus job names", 1)[0]
    names = set()
    for span in re.findall(r"`([^`]+)`", section):
        name = span.split("{", 1)[0]
        if re.fullmatch(r"[a-zA-Z_:][a-zA-Z0-9_:]*", name):
            names.add(name)
    for name in list(names):
        base = name[: -len("_bucket")] if name.endswith("_bucket") else name
        if name.endswith("_bucket") or name.endswith("_seconds"):
            names.update({f"{base}_bucket", f"{base}_sum", f"{base}_count"})
    return names | {"up"}


CNPG_DEFAULT_QUERIES = REPO_ROOT / "schemas" / "cnpg" / "default-monitoring.yaml"
# Metrics that come from the platform rather than from our services, by source:
# - CloudNativePG's collector (pkg/management/postgres/webserver/metricserver/pg_collector.go);
# - the Barman Cloud plugin (its docs, "Observability");
# - Istio's pilot-agent under metrics merging (pilot/cmd/pilot-agent/metrics/metrics.go).
PLATFORM_METRICS = {
    "cnpg_collector_sync_replicas",
    "barman_cloud_cloudnative_pg_io_last_available_backup_timestamp",
    "barman_cloud_cloudnative_pg_io_last_failed_backup_timestamp",
    "barman_cloud_cloudnative_pg_io_first_recoverability_point",
    "istio_agent_scrape_failures_total",
}


def platform_metric_names() -> set[str]:
    """CloudNativePG's default monitoring queries (schemas/cnpg/default-monitoring.yaml: cnpg_<query>_<column>
    for every column that is not a label), plus PLATFORM_METRICS."""
    import yaml

    config = yaml.safe_load(CNPG_DEFAULT_QUERIES.read_text())
    names = set(PLATFORM_METRICS)
    for query, definition in yaml.safe_load(config["data"]["queries"]).items():
        for column in definition["metrics"]:
            ((name, spec),) = column.items()
            if spec["usage"] != "LABEL":
                names.add(f"cnpg_{query}_{name}")
    return names
