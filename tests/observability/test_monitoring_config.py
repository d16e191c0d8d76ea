"""Static checks of the monitoring configuration with the real tools (promtool from Debian's
`prometheus` package; kubectl for the kustomization when present). No Django, no running services."""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
import subprocess
from datetime import datetime

import pytest
import yaml

from .dashboards import (
    DATASOURCE_UID,
    LOCAL_DATASOURCE_UID,
    REPO_ROOT,
    contract_metric_names,
    is_kubernetes_row,
    iter_panels,
    iter_targets,
    load_dashboards,
    metric_names,
    platform_metric_names,
    selectors,
    substitute,
    variable_queries,
    variable_query_as_promql,
    variables_in,
)
from .prom import PrometheusServer, free_port, load_render_config

PROM_DIR = REPO_ROOT / "prometheus"
GRAFANA_DIR = REPO_ROOT / "grafana"
FLUENT_BIT_DIR = REPO_ROOT / "fluent-bit"

EXPECTED_DASHBOARDS = {"services", "dependency", "resources", "mesh", "postgres"}
EXPECTED_ALERTS = {
    "ServiceHigh5xxRatio",
    "ServiceHighLatencyP99",
    "UserCheckUnavailable",
    "ServiceTargetDown",
    "ServiceDroppingLogLines",
    "CNPGArchivingFailing",
    "CNPGBackupTooOld",
    "CNPGNoBaseBackup",
    "CNPGBackupMetricsAbsent",
    "CNPGReplicationLag",
    "CNPGNoSynchronousStandby",
    "CNPGConnectionsNearLimit",
}
# Metrics that exist only on a cluster: cAdvisor's, Istio's (sidecars and their agent), kube-state's,
# CloudNativePG's exporter and the Barman Cloud plugin's.
CLUSTER_ONLY_PREFIXES = ("container_", "istio_", "kube_", "cnpg_", "barman_cloud_")
GRAFANA_GLOBALS = {"__rate_interval", "__interval", "__range"}


@pytest.fixture(scope="session")
def promtool():
    path = shutil.which("promtool")
    if not path:
        pytest.fail("promtool not found: install Debian's `prometheus` package (listed in tools/apt-packages.txt)")
    return path


def run(cmd, **kwargs):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, **kwargs)


def assert_ok(result):
    assert result.returncode == 0, (
        f"{' '.join(result.args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    )


@pytest.fixture(scope="module")
def dashboards():
    return load_dashboards()


# --- Prometheus ------------------------------------------------------------------------------------


def test_apt_packages_list_prometheus():
    lines = [line.strip() for line in (REPO_ROOT / "tools" / "apt-packages.txt").read_text().splitlines()]
    assert "prometheus" in lines


def test_checked_in_prometheus_yml_is_the_rendered_default():
    render = load_render_config()
    assert (PROM_DIR / "prometheus.yml").read_text() == render.render_config(rules="alerts.yml"), (
        "prometheus/prometheus.yml is out of date: "
        "python3 prometheus/render_config.py --output prometheus/prometheus.yml --relative-rules"
    )


def test_promtool_check_config_checked_in(promtool):
    assert_ok(run([promtool, "check", "config", str(PROM_DIR / "prometheus.yml")]))


def test_promtool_check_config_rendered_for_other_ports(promtool, tmp_path):
    path = load_render_config().write_config(tmp_path, user_port=18001, order_port=18002, scrape_interval="1s")
    assert_ok(run([promtool, "check", "config", str(path)]))
    config = yaml.safe_load(path.read_text())
    assert config["global"]["scrape_interval"] == "1s"
    targets = {job["job_name"]: job["static_configs"][0]["targets"] for job in config["scrape_configs"]}
    assert targets == {"user-svc": ["127.0.0.1:18001"], "order-svc": ["127.0.0.1:18002"]}
    assert config["rule_files"] == [str(PROM_DIR / "alerts.yml")]


def test_render_config_cli(tmp_path):
    result = run(
        [
            "python3",
            str(PROM_DIR / "render_config.py"),
            "--data-dir",
            str(tmp_path),
            "--user-port",
            "9101",
            "--order-port",
            "9102",
        ]
    )
    assert_ok(result)
    text = (tmp_path / "prometheus.yml").read_text()
    assert '"127.0.0.1:9101"' in text and '"127.0.0.1:9102"' in text and "scrape_interval: 5s" in text


def test_run_local_starts_prometheus_with_the_alert_rules(promtool, tmp_path):
    """What `./manage_all.sh monitor` runs: a Prometheus with our config and rules (no services needed)."""
    port = free_port()
    process = subprocess.Popen(
        [
            "python3",
            str(PROM_DIR / "run_local.py"),
            "--port",
            str(port),
            "--data-dir",
            str(tmp_path),
            "--user-port",
            "18001",
            "--order-port",
            "18002",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
    )
    server = PrometheusServer(process, f"http://127.0.0.1:{port}", tmp_path / "none.log", tmp_path / "prometheus.yml")
    try:
        server.wait_until_ready(30)
        names = {rule["name"] for group in server.rule_groups() for rule in group["rules"]}
        assert names >= EXPECTED_ALERTS
    finally:
        server.stop()
    assert '"127.0.0.1:18001"' in (tmp_path / "prometheus.yml").read_text()


def test_promtool_check_rules(promtool):
    assert_ok(run([promtool, "check", "rules", "--lint=all", "--lint-fatal", str(PROM_DIR / "alerts.yml")]))


def test_promtool_test_rules(promtool):
    result = run([promtool, "test", "rules", "alerts_test.yml"], cwd=PROM_DIR)
    assert_ok(result)
    assert "SUCCESS" in result.stdout


def test_alert_rules_shape():
    rules = [
        rule for group in yaml.safe_load((PROM_DIR / "alerts.yml").read_text())["groups"] for rule in group["rules"]
    ]
    alerts = {rule["alert"]: rule for rule in rules if "alert" in rule}
    assert set(alerts) >= EXPECTED_ALERTS
    allowed = contract_metric_names() | platform_metric_names()
    for name, rule in alerts.items():
        assert re.fullmatch(r"\d+[smh]", rule.get("for", "")), f"{name}: needs a `for` duration"
        assert rule["labels"]["severity"] in {"critical", "warning"}, name
        assert rule["annotations"].get("summary") and rule["annotations"].get("description"), name
        unknown = metric_names(rule["expr"]) - allowed
        assert not unknown, f"{name} uses {unknown}: neither in docs/CONTRACT.md nor a platform metric"


def test_every_alert_has_a_unit_test():
    tests = yaml.safe_load((PROM_DIR / "alerts_test.yml").read_text())["tests"]
    firing, quiet = set(), set()
    for case in tests:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert firing >= EXPECTED_ALERTS, f"no firing case for {EXPECTED_ALERTS - firing}"
    assert quiet >= EXPECTED_ALERTS, f"no quiet case for {EXPECTED_ALERTS - quiet}"


# --- Grafana ---------------------------------------------------------------------------------------


def test_dashboards_are_valid_json_with_unique_uids(dashboards):
    assert set(dashboards) == EXPECTED_DASHBOARDS
    uids = [board.get("uid") for board in dashboards.values()]
    assert all(uids) and len(set(uids)) == len(uids), uids
    assert all(re.fullmatch(r"[a-z0-9-]{1,40}", uid) for uid in uids), uids
    titles = [board.get("title") for board in dashboards.values()]
    assert all(titles) and len(set(titles)) == len(titles)
    for name, board in dashboards.items():
        assert board.get("id") is None, f"{name}: provisioned dashboards carry no database id"
        ids = [panel["id"] for panel in board["panels"]]
        assert len(set(ids)) == len(ids), f"{name}: duplicate panel ids"


def test_every_panel_target_has_expr_and_the_provisioned_datasource(dashboards):
    for name, board in dashboards.items():
        panels = list(iter_panels(board))
        assert panels, name
        for _row, panel in panels:
            where = f"{name}: panel {panel.get('title')!r}"
            assert panel.get("targets"), f"{where} has no targets"
            assert panel.get("datasource", {}).get("uid") == DATASOURCE_UID, where
            ref_ids = [target.get("refId") for target in panel["targets"]]
            assert len(set(ref_ids)) == len(ref_ids), f"{where}: duplicate refIds"
            for target in panel["targets"]:
                assert isinstance(target.get("expr"), str) and target["expr"].strip(), f"{where}: target without expr"
                assert target.get("datasource", {}).get("uid") == DATASOURCE_UID, f"{where}: target datasource"
                assert target.get("datasource", {}).get("type") == "prometheus", f"{where}: target datasource"
        variables = board.get("templating", {}).get("list", [])
        (source,) = [v for v in variables if v["name"] == "datasource"]
        assert (source["type"], source["query"]) == ("datasource", "prometheus"), f"{name}: datasource variable"
        for var in variables:
            if var.get("type") == "query":
                assert var.get("datasource", {}).get("uid") == DATASOURCE_UID, f"{name}: variable {var['name']}"


def test_dashboards_use_only_defined_variables(dashboards):
    for name, board in dashboards.items():
        defined = {var["name"] for var in board.get("templating", {}).get("list", [])} | GRAFANA_GLOBALS
        for _row, panel, target in iter_targets(board):
            unknown = variables_in(target["expr"]) - defined
            assert not unknown, f"{name}: panel {panel['title']!r} uses undefined {unknown}"


@pytest.mark.parametrize("name", sorted(EXPECTED_DASHBOARDS))
def test_dashboard_promql_parses(promtool, dashboards, name, tmp_path):
    """promtool parses every query (variables substituted), written as recording rules."""
    board = dashboards[name]
    prefix = "dashboard:" + board["uid"].replace("-", "_")
    rules = []
    for _row, panel, target in iter_targets(board):
        rules.append({"record": f"{prefix}:panel{panel['id']}_{target['refId']}", "expr": substitute(target["expr"])})
    for i, query in enumerate(variable_queries(board)):
        expr = variable_query_as_promql(substitute(query))
        if expr:
            rules.append({"record": f"{prefix}:variable{i}", "expr": expr})
    path = tmp_path / f"{name}.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": name, "rules": rules}]}, sort_keys=False))
    result = run([promtool, "check", "rules", str(path)])
    assert_ok(result)
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


def test_mesh_queries_count_each_request_once(dashboards):
    """Every istio_* selector has exactly one reporter="..." matcher, and one query never mixes reporters."""
    seen = 0
    for _row, panel, target in iter_targets(dashboards["mesh"]):
        reporters = set()
        for sel in selectors(substitute(target["expr"])):
            if not (sel.metric or "").startswith("istio_"):
                continue
            seen += 1
            matchers = sel.values("reporter")
            assert len(matchers) == 1 and matchers[0][0] == "=", (
                f'mesh panel {panel["title"]!r}: {sel.metric} needs exactly one reporter="..." matcher, has {matchers}'
            )
            assert matchers[0][1] in {"source", "destination"}
            reporters.add(matchers[0][1])
        assert len(reporters) <= 1, f"mesh panel {panel['title']!r} mixes reporters {reporters}"
    assert seen


def test_mesh_uses_istio_standard_metrics(dashboards):
    used = set().union(*(metric_names(substitute(t["expr"])) for _r, _p, t in iter_targets(dashboards["mesh"])))
    assert used == {"istio_requests_total", "istio_request_duration_milliseconds_bucket"}


def test_service_dashboards_use_contract_metrics_only(dashboards):
    """Typos in metric names of the service-level dashboards are caught against docs/CONTRACT.md."""
    allowed = contract_metric_names()
    for name in ("services", "dependency", "resources"):
        board = dashboards[name]
        for row, panel, target in iter_targets(board):
            if name == "resources" and is_kubernetes_row(row):
                continue  # cAdvisor's metrics, checked below
            unknown = metric_names(substitute(target["expr"])) - allowed
            assert not unknown, f"{name}: panel {panel['title']!r} uses {unknown}, not in docs/CONTRACT.md"
        for query in variable_queries(board):
            expr = variable_query_as_promql(substitute(query))
            assert expr and not metric_names(expr) - allowed, f"{name}: variable query {query!r}"


def test_kubernetes_only_panels_sit_in_rows_that_say_so(dashboards):
    for name, board in dashboards.items():
        for row, panel, target in iter_targets(board):
            names = metric_names(substitute(target["expr"]))
            cluster_only = {m for m in names if m.startswith(CLUSTER_ONLY_PREFIXES)}
            if cluster_only:
                assert is_kubernetes_row(row), (
                    f"{name}: panel {panel['title']!r} needs a cluster but sits in row {row!r}"
                )
            elif name != "mesh":
                assert not is_kubernetes_row(row), (
                    f"{name}: panel {panel['title']!r} works locally but sits in row {row!r}"
                )


def test_services_dashboard_content(dashboards):
    board = dashboards["services"]
    variables = {var["name"] for var in board["templating"]["list"]}
    # `app`, not `job`: under the Istio addon Prometheus every pod is scraped by the job kubernetes-pods
    assert "app" in variables
    exprs = [target["expr"] for _r, _p, target in iter_targets(board)]
    assert all('app=~"$app"' in expr for expr in exprs)
    joined = "\n".join(exprs)
    assert "rate(django_http_requests_total_by_view_transport_method_total" in joined
    assert 'status=~"5.."' in joined
    for quantile in ("0.5", "0.95", "0.99"):
        assert re.search(
            rf"histogram_quantile\({quantile}, sum by \(app, view, method, le\) "
            r"\(rate\(django_http_requests_latency_seconds_by_view_method_bucket",
            joined,
        ), f"no p{quantile} by view and method"


def test_dependency_dashboard_content(dashboards):
    joined = "\n".join(target["expr"] for _r, _p, target in iter_targets(dashboards["dependency"]))
    assert re.search(r"by \([^)]*outcome[^)]*\) \(rate\(user_check_total", joined)
    assert "rate(user_check_retries_total" in joined
    for quantile in ("0.5", "0.99"):
        assert f"histogram_quantile({quantile}, sum by (app, le) (rate(user_check_duration_seconds_bucket" in joined


def test_resources_dashboard_content(dashboards):
    local, cluster = [], []
    for row, _panel, target in iter_targets(dashboards["resources"]):
        (cluster if is_kubernetes_row(row) else local).append(target["expr"])
    local_metrics = set().union(*(metric_names(substitute(expr)) for expr in local))
    assert local_metrics == {"process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds"}
    assert any("rate(process_cpu_seconds_total" in expr for expr in local)
    cluster_metrics = set()
    for expr in cluster:
        for sel in selectors(substitute(expr)):
            cluster_metrics.add(sel.metric)
            assert sel.values("namespace") == [("=", "meshed")], expr
            # the services' container is named `app` in k8s/base (kubectl.kubernetes.io/default-container)
            assert sel.values("container") == [("=", "app")], expr
            assert sel.values("pod") == [("=~", "(user-svc|order-svc)-.+")], expr
    assert cluster_metrics == {"container_cpu_usage_seconds_total", "container_memory_working_set_bytes"}


def test_grafana_provisioning():
    datasources = yaml.safe_load((GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml").read_text())
    assert datasources["apiVersion"] == 1
    (source,) = datasources["datasources"]
    assert source["uid"] == LOCAL_DATASOURCE_UID and source["type"] == "prometheus"
    assert source["url"]

    providers = yaml.safe_load((GRAFANA_DIR / "provisioning" / "dashboards" / "dashboards.yml").read_text())
    assert providers["apiVersion"] == 1
    (provider,) = providers["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"].startswith("/var/lib/grafana/dashboards")


# --- Fluent Bit ------------------------------------------------------------------------------------


def _on(value) -> bool:
    return str(value).lower() in {"on", "true", "yes", "1"}


@pytest.fixture(scope="module")
def fluent_bit():
    return yaml.safe_load((FLUENT_BIT_DIR / "fluent-bit.yaml").read_text())


def test_fluent_bit_inputs_tail_the_service_containers(fluent_bit):
    (tail,) = [i for i in fluent_bit["pipeline"]["inputs"] if i["name"] == "tail"]
    patterns = [p.strip() for p in tail["path"].split(",")]
    for deployment in ("user-svc", "order-svc"):
        # /var/log/containers/<pod>_<namespace>_<container>-<container id>.log; the container is "app"
        # (tests/deploy/test_cross_refs.py checks the names against the rendered Deployments).
        log = f"/var/log/containers/{deployment}-5d9c7b-abcde_meshed_app-0123456789abcdef.log"
        assert any(fnmatch.fnmatch(log, p) for p in patterns), f"{deployment} logs not tailed"
    # Neither the sidecar, nor other namespaces, nor other workloads' app containers.
    for other in (
        "/var/log/containers/user-svc-5d9c7b-abcde_meshed_istio-proxy-0123.log",
        "/var/log/containers/user-svc-5d9c7b-abcde_default_app-0123.log",
        "/var/log/containers/meshed-pg-1_meshed_app-0123.log",
    ):
        assert not any(fnmatch.fnmatch(other, p) for p in patterns), other
    assert "cri" in [p.strip() for p in str(tail.get("multiline.parser", "")).split(",")]
    assert tail["tag"] == "kube.*"


def test_fluent_bit_json_parser_reads_our_timestamps(fluent_bit):
    parsers = {p["name"]: p for p in fluent_bit["parsers"]}
    (kube,) = [f for f in fluent_bit["pipeline"]["filters"] if f["name"] == "kubernetes"]
    parser = parsers[kube["merge_parser"]]
    assert parser["format"] == "json"
    assert parser["time_key"] == "timestamp"
    # A timestamp as svc_common/observability/log_config.py writes it (structlog TimeStamper(fmt="iso", utc=True)).
    python_format = parser["time_format"].replace("%L", "%f")
    parsed = datetime.strptime("2026-11-26T15:13:24.328629Z", python_format)
    assert parsed.utcoffset().total_seconds() == 0


def test_fluent_bit_kubernetes_filter(fluent_bit):
    (kube,) = [f for f in fluent_bit["pipeline"]["filters"] if f["name"] == "kubernetes"]
    assert _on(kube["merge_log"]) and not _on(kube["keep_log"])
    assert kube["kube_tag_prefix"] == "kube.var.log.containers."


def test_fluent_bit_outputs(fluent_bit):
    outputs = {o["name"]: o for o in fluent_bit["pipeline"]["outputs"]}
    assert {"es", "loki"} <= set(outputs)
    assert re.fullmatch(r"\$\{\w+\}", str(outputs["es"]["host"]))
    assert re.fullmatch(r"\$\{\w+\}", str(outputs["loki"]["host"]))
    tags = [i["tag"].replace("*", "var.log.containers.x") for i in fluent_bit["pipeline"]["inputs"]]
    for plugin in fluent_bit["pipeline"]["filters"] + fluent_bit["pipeline"]["outputs"]:
        assert any(fnmatch.fnmatch(tag, plugin["match"]) for tag in tags), f"{plugin['name']} matches no input"
    # Labels stay low-cardinality: no per-request ids.
    assert not re.search(r"request_id|trace_id|span_id", outputs["loki"]["labels"])


def test_fluent_bit_configmap_kustomization():
    kustomization = yaml.safe_load((FLUENT_BIT_DIR / "kustomization.yaml").read_text())
    (generator,) = kustomization["configMapGenerator"]
    for name in generator["files"]:
        assert (FLUENT_BIT_DIR / name.split("=")[-1]).is_file()
    kubectl = shutil.which("kubectl")
    if kubectl:  # render it for real when kubectl is around (it ships kustomize)
        result = run([kubectl, "kustomize", str(FLUENT_BIT_DIR)])
        assert_ok(result)
        (configmap,) = list(yaml.safe_load_all(result.stdout))
        assert configmap["kind"] == "ConfigMap" and configmap["metadata"]["name"] == "fluent-bit-config"
        assert configmap["data"]["fluent-bit.yaml"] == (FLUENT_BIT_DIR / "fluent-bit.yaml").read_text()


def test_dashboards_json_is_formatted(dashboards):
    """Stable diffs: files are 2-space indented JSON, as written by json.dumps(indent=2)."""
    for name, board in dashboards.items():
        text = (GRAFANA_DIR / "dashboards" / f"{name}.json").read_text()
        assert text == json.dumps(board, indent=2, ensure_ascii=False) + "\n", f"{name}.json: reformat with indent=2"


def test_postgres_dashboard_uses_cloudnativepg_metrics_for_its_cluster(dashboards):
    """Every query of the PostgreSQL dashboard names metrics CloudNativePG or the Barman Cloud plugin
    really export, selects the production cluster by the labels the job cnpg-instances sets, and the
    panels cover what the alerts watch."""
    known = platform_metric_names()
    used = set()
    for _row, panel, target in iter_targets(dashboards["postgres"]):
        for sel in selectors(substitute(target["expr"])):
            if not sel.metric:
                continue
            assert sel.metric in known, f"postgres panel {panel['title']!r}: {sel.metric} is not exported"
            assert sel.values("namespace") == [("=", "meshed")] and sel.values("cluster") == [("=", "meshed-pg")]
            used.add(sel.metric)
    alerting = {
        m
        for group in yaml.safe_load((PROM_DIR / "alerts.yml").read_text())["groups"]
        if group["name"] == "meshed-postgres"
        for rule in group["rules"]
        for m in metric_names(rule["expr"])
    }
    assert alerting - {"cnpg_pg_stat_archiver_last_failed_time", "cnpg_pg_stat_archiver_last_archived_time"} <= used
