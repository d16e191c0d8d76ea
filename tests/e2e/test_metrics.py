"""/metrics of both services under gunicorn: counters move by exactly what the traffic did."""

import os
import pathlib
import re
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from testsupport.observability import delta, scrape, started, value, wait_for_records
from testsupport.postgres_server import postgres_env, service_database
from testsupport.scripted_server import ScriptedServer, proxy, respond
from testsupport.services import ROOT

RESPONSES = "django_http_responses_total_by_status_view_method_total"
REQUESTS_BY_VIEW = "django_http_requests_total_by_view_transport_method_total"
LATENCY_BUCKET = "django_http_requests_latency_seconds_by_view_method_bucket"
SUB_10MS_BUCKETS = {"0.0005", "0.001", "0.0025", "0.005", "0.0075"}


def order(user_id):
    return {"user_id": user_id, "items": [{"sku": "PEN", "quantity": 2, "unit_price": "1.25"}]}


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    """The user service, and the order service calling it through a scripted server that answers
    503 twice and then passes through (found); passes through (not found); answers 503 three times
    (unavailable: USER_SVC_ATTEMPTS is 3); and passes through from then on."""
    log_dir = tmp_path_factory.mktemp("metrics")
    with started(log_dir, ("user-svc", {})) as (user,):
        steps = [
            respond(503),
            respond(503),
            proxy(user.url),
            proxy(user.url),
            respond(503),
            respond(503),
            respond(503),
            proxy(user.url),
        ]
        with ScriptedServer(steps) as scripted:
            with started(log_dir, ("order-svc", {"USER_SVC_URL": scripted.url})) as (order_svc,):
                yield user, order_svc, scripted


def test_counters_move_by_exactly_the_scripted_traffic(services):
    user, order_svc, scripted = services
    user_before, order_before = scrape(user.url), scrape(order_svc.url)

    ids = [
        requests.post(f"{user.url}/users", json={"name": f"U{n}", "email": f"u{n}@example.com"}, timeout=5).json()["id"]
        for n in range(3)
    ]
    duplicate = requests.post(f"{user.url}/users", json={"name": "Again", "email": "U0@example.com"}, timeout=5)
    assert duplicate.status_code == 409
    found = requests.post(f"{order_svc.url}/orders", json=order(ids[0]), timeout=10)  # 503, 503, found
    not_found = requests.post(f"{order_svc.url}/orders", json=order(987654), timeout=10)  # not found
    unavailable = requests.post(f"{order_svc.url}/orders", json=order(ids[1]), timeout=10)  # 503 x3
    assert (found.status_code, not_found.status_code, unavailable.status_code) == (201, 404, 503)
    assert len(scripted.requests) == 7

    user_after, order_after = scrape(user.url), scrape(order_svc.url)
    assert delta(user_before, user_after, "users_created_total") == 3
    assert delta(order_before, order_after, "orders_created_total") == 1
    assert delta(order_before, order_after, "user_check_total", outcome="found") == 1
    assert delta(order_before, order_after, "user_check_total", outcome="not_found") == 1
    assert delta(order_before, order_after, "user_check_total", outcome="unavailable") == 1
    assert delta(order_before, order_after, "user_check_retries_total") == 4
    assert delta(order_before, order_after, "user_check_duration_seconds_count") == 3

    # django-prometheus labels each request with its route's name
    for status in ("201", "404", "503"):
        assert delta(order_before, order_after, RESPONSES, status=status, view="order-list", method="POST") == 1
    assert delta(order_before, order_after, REQUESTS_BY_VIEW, view="order-list", transport="http", method="POST") == 3
    assert delta(user_before, user_after, RESPONSES, status="201", view="user-list", method="POST") == 3
    assert delta(user_before, user_after, RESPONSES, status="409", view="user-list", method="POST") == 1
    # only the two calls the scripted server passed through reached the user service
    assert delta(user_before, user_after, RESPONSES, status="200", view="user-detail", method="GET") == 1
    assert delta(user_before, user_after, RESPONSES, status="404", view="user-detail", method="GET") == 1


def test_latency_buckets_resolve_fast_requests_and_build_info_is_published(services):
    user, order_svc, _ = services
    requests.get(f"{user.url}/users", timeout=5)
    for service, name in ((user, "user-svc"), (order_svc, "order-svc")):
        samples = scrape(service.url)
        buckets = {dict(labels)["le"] for sample, labels in samples if sample == LATENCY_BUCKET}
        assert buckets >= SUB_10MS_BUCKETS, sorted(buckets)
        assert value(samples, "app_build_info", service=name, version="0.1.0", env="local") == 1
        for key in ("process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds"):
            assert key in {sample for sample, _ in samples}
    user_check_buckets = {
        dict(labels)["le"] for sample, labels in scrape(order_svc.url) if sample == "user_check_duration_seconds_bucket"
    }
    assert {"0.001", "0.0025", "0.005"} <= user_check_buckets


def test_every_view_label_is_a_route_name(services):
    user, order_svc, _ = services
    requests.get(f"{user.url}/users/1", timeout=5)
    requests.get(f"{user.url}/healthz", timeout=5)
    requests.get(f"{order_svc.url}/orders", timeout=5)
    expected = {
        "user-list",
        "user-detail",
        "order-list",
        "order-detail",
        "healthz",
        "readyz",
        "prometheus-django-metrics",
        "schema",
        "docs",
    }
    for service in (user, order_svc):
        views = {dict(labels)["view"] for _, labels in scrape(service.url) if "view" in dict(labels)}
        assert views and views <= expected, views


def test_two_workers_report_one_set_of_numbers(tmp_path, postgres_server):
    """GUNICORN_WORKERS=2 (PostgreSQL backend): whichever worker answers /metrics, it reports what both
    workers counted (prometheus_client's multiprocess mode, set up by gunicorn_conf)."""
    multiproc_dir = tmp_path / "prometheus-multiproc"
    env = postgres_env(service_database(postgres_server, "user-svc"), PROMETHEUS_MULTIPROC_DIR=multiproc_dir)
    with started(tmp_path, ("user-svc", env)) as (user,):
        creates = 24

        def create(n):  # a new connection per request, so both workers get some
            return requests.post(
                f"{user.url}/users",
                json={"name": f"W{n}", "email": f"w{n}@example.com"},
                headers={"Connection": "close"},
                timeout=10,
            ).status_code

        with ThreadPoolExecutor(8) as pool:
            assert set(pool.map(create, range(creates))) == {201}

        records = wait_for_records(
            user,
            lambda rs: sum(1 for r in rs if r.get("event") == "request_finished" and r["method"] == "POST") == creates,
        )
        workers = {r["event"].rsplit(" ", 1)[-1] for r in records if r["event"].startswith("Booting worker")}
        assert len(workers) == 2
        served_by = {str(r["pid"]) for r in records if r.get("event") == "request_finished" and r["method"] == "POST"}
        assert served_by <= workers

        def scraped_by(count):
            return {
                str(r["pid"])
                for r in wait_for_records(
                    user,
                    lambda rs: (
                        sum(1 for r in rs if r.get("event") == "request_finished" and r["path"] == "/metrics") == count
                    ),
                )
                if r.get("event") == "request_finished" and r["path"] == "/metrics"
            }

        # Scrape until both workers have answered at least once between them (POSTs and scrapes):
        # then some worker reported counts that the other one made.
        scrapes = 0
        while scrapes < 10 or (len(served_by | scraped_by(scrapes)) < 2 and scrapes < 60):
            samples = scrape(user.url)
            scrapes += 1
            assert value(samples, "users_created_total") == creates
            assert value(samples, RESPONSES, status="201", view="user-list", method="POST") == creates
            assert value(samples, "app_build_info", service="user-svc", version="0.1.0", env="local") == 1
        assert len(served_by | scraped_by(scrapes)) == 2, "one worker answered everything"
        # the per-process files the numbers were added up from
        assert {name.rsplit("_", 1)[-1].removesuffix(".db") for name in os.listdir(multiproc_dir)} >= served_by
        # resources of the whole group (master + 2 workers), which multiprocess mode alone drops
        group_rss = sum(
            int(pathlib.Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
            for pid in [user.process.pid, *map(int, workers)]
        )
        samples = scrape(user.url)
        assert value(samples, "process_cpu_seconds_total") > 0
        assert value(samples, "process_open_fds") >= 3 * 3  # stdin/out/err at least, per process
        assert 0.8 * group_rss < value(samples, "process_resident_memory_bytes") < 1.25 * group_rss


def test_the_request_families_exported_are_the_ones_dashboards_and_alerts_read(services):
    """Each request updates only the django_http_* families that something reads (issue: metrics
    that earn their cost); the exceptions counters appear once something raises."""
    user = services[0]
    requests.get(f"{user.url}/users/1", timeout=5)
    read = set()
    for path in [*(ROOT / "grafana" / "dashboards").glob("*.json"), ROOT / "prometheus" / "alerts.yml"]:
        read |= {base_family(name) for name in re.findall(r"django_http_[a-z_]+", path.read_text())}
    exported = {base_family(name) for name, _ in scrape(user.url) if name.startswith("django_http_")}
    assert exported == read, (sorted(exported - read), sorted(read - exported))


def base_family(sample: str) -> str:
    return re.sub(r"_(bucket|count|sum|total|created)$", "", sample)
