"""A real Prometheus scrapes the two running services; every dashboard query that should have data
locally (services, dependency, and the process panels of resources) returns some.

`running_services` comes from tests/conftest.py (both services under gunicorn on free loopback ports,
with `.user_url` and `.order_url`)."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request

import pytest

from .dashboards import is_kubernetes_row, iter_targets, load_dashboards, substitute
from .prom import start_prometheus

JOBS = ("user-svc", "order-svc")
# Scrape every second; a 15s rate window then holds plenty of points a few seconds after traffic.
LIVE_VARIABLES = {
    "app": "|".join(JOBS),
    "view": ".+",
    "__rate_interval": "15s",
    "__interval": "1s",
    "__range": "5m",
}
DATA_TIMEOUT = 30  # seconds for every local query to return data


def _port(url: str) -> int:
    return urllib.parse.urlsplit(url).port


def _call(method: str, url: str, body: dict | None = None) -> tuple[int, dict | None]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            payload = response.read()
            return response.status, (json.loads(payload) if payload else None)
    except urllib.error.HTTPError as exc:
        return exc.code, None


def drive_traffic(user_url: str, order_url: str, rounds: int = 3, tag: str = "observer") -> None:
    """A little of everything: creates, reads, a missing user (404), an order for an existing and for
    a missing user (both go through the user check)."""
    for i in range(rounds):
        status, user = _call("POST", f"{user_url}/users", {"name": f"Observer {i}", "email": f"{tag}{i}@example.com"})
        assert status == 201, f"creating a user answered {status}"
        _call("GET", f"{user_url}/users/{user['id']}")
        _call("GET", f"{user_url}/users")
        _call("GET", f"{user_url}/users/999999999")
        item = {"sku": "SKU-1", "quantity": 2, "unit_price": "9.99"}
        status, _ = _call("POST", f"{order_url}/orders", {"user_id": user["id"], "items": [item]})
        assert status == 201, f"creating an order answered {status}"
        _call("POST", f"{order_url}/orders", {"user_id": 999999999, "items": [item]})
        _call("GET", f"{order_url}/orders?user_id={user['id']}")
        _call("GET", f"{order_url}/orders")


def local_and_cluster_queries():
    local, cluster = [], []
    for name, board in load_dashboards().items():
        for row, panel, target in iter_targets(board):
            query = (f"{name}: {panel['title']} [{target['refId']}]", substitute(target["expr"], LIVE_VARIABLES))
            if name in ("services", "dependency") or (name == "resources" and not is_kubernetes_row(row)):
                local.append(query)
            else:
                cluster.append(query)
    return local, cluster


@pytest.fixture
def prometheus(running_services, tmp_path):
    with start_prometheus(
        tmp_path,
        user_port=_port(running_services.user_url),
        order_port=_port(running_services.order_url),
        scrape_interval="1s",
    ) as prom:
        yield prom


def test_dashboard_queries_return_data_from_a_real_prometheus(running_services, prometheus):
    prometheus.wait_for_targets_up(JOBS, timeout=30)
    drive_traffic(running_services.user_url, running_services.order_url)

    local, cluster = local_and_cluster_queries()
    assert len(local) >= 20

    # Queries only a cluster has data for must still be valid for this Prometheus.
    for title, expr in cluster:
        answer = prometheus.query_response(expr)
        assert answer.get("status") == "success", f"{title}: {expr}\n{answer}"

    pending = prometheus.queries_without_data(dict(local), DATA_TIMEOUT)
    assert not pending, "no data after {}s for:\n{}\nPrometheus log:\n{}".format(
        DATA_TIMEOUT, "\n".join(f"  {title}: {expr}" for title, expr in pending.items()), prometheus.log()
    )

    # The traffic above is visible per job, and the alert rules were loaded and evaluate.
    rate = prometheus.query(
        'sum by (job) (django_http_requests_total_by_view_transport_method_total{view!="prometheus-django-metrics"})'
    )
    assert {series["metric"]["job"] for series in rate["result"]} == set(JOBS)
    rules = prometheus.rule_groups()
    alerts = {rule["name"]: rule for group in rules for rule in group["rules"] if rule["type"] == "alerting"}
    assert {"ServiceHigh5xxRatio", "ServiceHighLatencyP99", "UserCheckUnavailable", "ServiceTargetDown"} <= set(alerts)
    assert all(rule["health"] != "err" for rule in alerts.values()), alerts
    assert alerts["ServiceTargetDown"]["state"] == "inactive"
