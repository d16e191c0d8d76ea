"""Traces from both services under gunicorn, exported over OTLP/HTTP to a real receiver on loopback."""

import os
import time
import uuid

import pytest
import requests

from mesh_rehearsal.otlp_receiver import OtlpReceiver
from testsupport.observability import access_lines, records_for, started, wait_for_records
from testsupport.services import free_port

ORDER_ITEMS = [{"sku": "BOOK-1", "quantity": 1, "unit_price": "9.99"}]
TRACING_ENV = {
    "OTEL_BSP_SCHEDULE_DELAY": 200,  # ms: spans reach the receiver quickly
    "SERVICE_VERSION": "1.2.3-test",
    "DEPLOY_ENV": "e2e",
}


@pytest.fixture(scope="module")
def receiver():
    with OtlpReceiver() as receiver:
        yield receiver


@pytest.fixture(scope="module")
def traced(receiver, tmp_path_factory):
    """Both services exporting to the receiver."""
    env = {**TRACING_ENV, "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url}
    with started(tmp_path_factory.mktemp("traced"), ("user-svc", env)) as (user,):
        with started(user.log_path.parent, ("order-svc", {**env, "USER_SVC_URL": user.url})) as (order,):
            yield user, order


def request_id() -> str:
    return f"test-{uuid.uuid4()}"


def trace_id_of(service, rid: str) -> str:
    """The one trace id on every log line the service wrote for the request (access line included)."""
    records = wait_for_records(service, lambda rs: access_lines(records_for(rs, rid)))
    lines = records_for(records, rid)
    assert len(access_lines(lines)) == 1, lines
    trace_ids = {r.get("trace_id") for r in lines}
    assert len(trace_ids) == 1 and None not in trace_ids, lines
    return trace_ids.pop()


def ancestors(span, by_id):
    while span.parent_span_id in by_id:
        span = by_id[span.parent_span_id]
        yield span


def test_order_creation_is_one_trace_across_both_services(traced, receiver):
    user, order = traced
    user_id = requests.post(f"{user.url}/users", json={"name": "Ada", "email": "ada@example.com"}, timeout=5).json()[
        "id"
    ]
    rid = request_id()
    response = requests.post(
        f"{order.url}/orders",
        json={"user_id": user_id, "items": ORDER_ITEMS},
        headers={"X-Request-ID": rid},
        timeout=10,
    )
    assert response.status_code == 201, response.text

    trace_id = trace_id_of(order, rid)
    assert trace_id_of(user, rid) == trace_id  # the user service logged the same request and trace ids

    def complete(spans):
        kinds = {(s.service, s.kind) for s in spans if s.trace_id == trace_id}
        return {("order-svc", "SERVER"), ("order-svc", "CLIENT"), ("user-svc", "SERVER")} <= kinds

    spans = [s for s in receiver.wait_for(complete) if s.trace_id == trace_id]
    by_id = {s.span_id: s for s in spans}
    (order_server,) = [s for s in spans if s.service == "order-svc" and s.kind == "SERVER"]
    (client,) = [s for s in spans if s.service == "order-svc" and s.kind == "CLIENT"]
    (user_server,) = [s for s in spans if s.service == "user-svc" and s.kind == "SERVER"]

    assert order_server.parent_span_id == ""  # the test sent no trace context: the order service starts it
    assert client in ancestors(user_server, by_id)  # the user service's span joined through the call
    assert order_server in ancestors(client, by_id)
    assert "orders" in order_server.attributes["http.route"]  # DRF router regex: ^orders/?$
    assert f"/users/{user_id}" in (client.attributes.get("url.full") or client.attributes.get("http.url"))

    for span in spans:
        assert span.resource["service.name"] == span.service
        assert span.resource["service.version"] == "1.2.3-test"
        assert span.resource["deployment.environment"] == "e2e"
    assert {s.service for s in spans} == {"order-svc", "user-svc"}
    assert {s.status for s in spans} == {"UNSET"}  # 2xx all along: no span is an error
    # the exporter's own POSTs to the receiver are not traced (no span about /v1/traces anywhere)
    assert not [s for s in receiver.snapshot() if "/v1/traces" in str(s.attributes)]
    assert {r["content_type"] for r in receiver.requests} == {"application/x-protobuf"}


def test_incoming_b3_headers_are_joined(traced, receiver):
    user, _ = traced
    b3_trace_id, b3_span_id = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    rid = request_id()
    response = requests.get(
        f"{user.url}/users/424242",
        timeout=5,
        headers={
            "X-Request-ID": rid,
            "X-B3-TraceId": b3_trace_id,
            "X-B3-SpanId": b3_span_id,
            "X-B3-Sampled": "1",
        },
    )
    assert response.status_code == 404

    spans = receiver.wait_for(lambda spans: any(s.trace_id == b3_trace_id for s in spans))
    (server,) = [s for s in spans if s.trace_id == b3_trace_id]
    assert (server.service, server.kind, server.parent_span_id) == ("user-svc", "SERVER", b3_span_id)
    assert trace_id_of(user, rid) == b3_trace_id
    # Named by its route (the response hook), described as opentelemetry-instrumentation-django does
    # by default (old semantic conventions); a 404 is the client's error, not the server's.
    assert (server.name, server.status) == ("GET /users/{pk}", "UNSET")
    port = int(user.url.rsplit(":", 1)[1])
    peer_port = server.attributes.pop("net.peer.port")
    assert 0 < peer_port < 65536 and peer_port != port
    assert server.attributes == {
        "http.method": "GET",
        "http.server_name": "127.0.0.1",
        "http.scheme": "http",
        "net.host.name": f"127.0.0.1:{port}",
        "http.host": f"127.0.0.1:{port}",
        "net.host.port": port,
        "http.target": "/users/424242",
        "net.peer.ip": "127.0.0.1",
        "http.user_agent": requests.utils.default_user_agent(),
        "http.flavor": "1.1",
        "http.route": "/users/{pk}",
        "http.status_code": 404,
    }


def test_a_5xx_answer_marks_the_server_span_as_an_error(receiver, tmp_path_factory):
    """The user service is down: the order service answers 503, and its server span says so."""
    env = {
        **TRACING_ENV,
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
        "USER_SVC_URL": f"http://127.0.0.1:{free_port()}",
    }
    rid = request_id()
    with started(tmp_path_factory.mktemp("unavailable"), ("order-svc", env)) as (order,):
        response = requests.post(
            f"{order.url}/orders",
            json={"user_id": 1, "items": ORDER_ITEMS},
            headers={"X-Request-ID": rid},
            timeout=30,
        )
        assert response.status_code == 503, response.text
        trace_id = trace_id_of(order, rid)
    spans = [
        s for s in receiver.wait_for(lambda spans: any(s.trace_id == trace_id for s in spans)) if s.trace_id == trace_id
    ]
    (server,) = [s for s in spans if s.kind == "SERVER"]
    assert (server.name, server.status, server.attributes["http.status_code"]) == ("POST /orders", "ERROR", 503)
    clients = [s for s in spans if s.kind == "CLIENT"]
    assert clients and {s.status for s in clients} == {"ERROR"}  # each attempt at the user service failed


def test_a_missing_user_is_an_error_for_the_client_span_only(traced, receiver):
    """The user service answers 404: for the order service's call that is an error (a client's 4xx),
    for the two servers a client's mistake, not theirs (a server's 4xx is no error)."""
    _user, order = traced
    rid = request_id()
    response = requests.post(
        f"{order.url}/orders",
        json={"user_id": 987654321, "items": ORDER_ITEMS},
        headers={"X-Request-ID": rid},
        timeout=10,
    )
    assert 400 <= response.status_code < 500, response.text
    trace_id = trace_id_of(order, rid)

    def complete(spans):
        return {(s.service, s.kind) for s in spans if s.trace_id == trace_id} >= {
            ("order-svc", "SERVER"),
            ("order-svc", "CLIENT"),
            ("user-svc", "SERVER"),
        }

    spans = [s for s in receiver.wait_for(complete) if s.trace_id == trace_id]
    (client,) = [s for s in spans if s.kind == "CLIENT"]  # a 404 is not retried
    assert (client.status, client.attributes["http.status_code"]) == ("ERROR", 404)
    (user_server,) = [s for s in spans if s.service == "user-svc"]
    assert (user_server.status, user_server.attributes["http.status_code"]) == ("UNSET", 404)
    (order_server,) = [s for s in spans if s.service == "order-svc" and s.kind == "SERVER"]
    assert (order_server.status, order_server.attributes["http.status_code"]) == ("UNSET", response.status_code)


def test_worker_exit_flushes_spans_and_sampling_follows_the_parent(receiver, tmp_path_factory):
    """Export delay of a minute: spans only leave when the worker exits. The SDK's sampler from the
    standard variables, parent-based ratio 0: a request without trace context is not sampled (its log
    lines still carry a trace id); one whose caller sampled it is."""
    env = {
        **TRACING_ENV,
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
        "OTEL_BSP_SCHEDULE_DELAY": 60_000,
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "0",
    }
    sampled_trace_id = uuid.uuid4().hex
    unsampled_rid, sampled_rid = request_id(), request_id()
    with started(tmp_path_factory.mktemp("flush"), ("user-svc", env)) as (user,):
        requests.get(f"{user.url}/users", headers={"X-Request-ID": unsampled_rid}, timeout=5)
        requests.get(
            f"{user.url}/users",
            timeout=5,
            headers={"X-Request-ID": sampled_rid, "traceparent": f"00-{sampled_trace_id}-{uuid.uuid4().hex[:16]}-01"},
        )
        unsampled_trace_id = trace_id_of(user, unsampled_rid)
        assert trace_id_of(user, sampled_rid) == sampled_trace_id
        time.sleep(0.3)
        assert not [s for s in receiver.snapshot() if s.trace_id == sampled_trace_id]  # still queued
    spans = receiver.wait_for(lambda spans: any(s.trace_id == sampled_trace_id for s in spans), timeout=5)
    assert not [s for s in spans if s.trace_id == unsampled_trace_id]


def test_spans_leave_512_at_a_time_as_soon_as_512_have_queued(tmp_path_factory):
    """The export delay at a minute: spans still leave as soon as a batch has queued, the SDK's
    BatchSpanProcessor's 512 at a time."""
    env = {**TRACING_ENV, "OTEL_BSP_SCHEDULE_DELAY": 60_000}
    with OtlpReceiver() as own_receiver:
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = own_receiver.url
        with started(tmp_path_factory.mktemp("batches"), ("user-svc", env)) as (user,), requests.Session() as http:
            for _ in range(600):  # one SERVER span each
                assert http.get(f"{user.url}/users/1", timeout=5).status_code == 404
            own_receiver.wait_for(lambda spans: len(spans) >= 512)
            time.sleep(0.3)  # nothing more is on its way
            assert [export["spans"] for export in own_receiver.requests] == [512]


def test_without_an_endpoint_a_sidecars_trace_is_carried_but_nothing_exported(running_services):
    """No SDK without an endpoint: nothing recorded or exported, nothing complained about, yet a trace
    context that arrives (as from an Envoy sidecar) reaches the logs and the call to the user service."""
    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        pytest.skip("the environment sets an OTLP endpoint for every service")
    user, order = running_services.user, running_services.order
    user_id = requests.post(f"{user.url}/users", json={"name": "Bo", "email": "bo@example.com"}, timeout=5).json()["id"]
    trace_id, rid = uuid.uuid4().hex, request_id()
    response = requests.post(
        f"{order.url}/orders",
        json={"user_id": user_id, "items": ORDER_ITEMS},
        timeout=10,
        headers={"X-Request-ID": rid, "traceparent": f"00-{trace_id}-{uuid.uuid4().hex[:16]}-01"},
    )
    assert response.status_code == 201, response.text
    assert trace_id_of(order, rid) == trace_id_of(user, rid) == trace_id

    untraced = request_id()
    requests.get(f"{user.url}/users/{user_id}", headers={"X-Request-ID": untraced}, timeout=5)
    records = wait_for_records(user, lambda rs: access_lines(records_for(rs, untraced)))
    assert {r.get("trace_id") for r in records_for(records, untraced)} == {None}  # no trace arrived, none made up

    time.sleep(0.3)
    for service in (user, order):
        complaints = [
            r
            for r in service.log_records()
            if r["level"] in {"warning", "error", "critical"}
            and ("opentelemetry" in r.get("logger", "") or "export" in r["event"].lower())
        ]
        assert complaints == []


def test_new_semantic_conventions_on_opt_in_and_the_route_shaped_name_kept(receiver, tmp_path_factory):
    """OTEL_SEMCONV_STABILITY_OPT_IN=http: the stable attribute names, on both the server and the client
    spans; the span is still named METHOD /route."""
    env = {**TRACING_ENV, "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_SEMCONV_STABILITY_OPT_IN": "http"}
    with started(tmp_path_factory.mktemp("semconv"), ("user-svc", env)) as (user,):
        with started(user.log_path.parent, ("order-svc", {**env, "USER_SVC_URL": user.url})) as (order,):
            rid = request_id()
            response = requests.post(
                f"{order.url}/orders",
                json={"user_id": 424242, "items": ORDER_ITEMS},
                headers={"X-Request-ID": rid},
                timeout=10,
            )
            assert response.status_code == 404, response.text  # no such user
            trace_id = trace_id_of(order, rid)

            def complete(spans):
                return len([s for s in spans if s.trace_id == trace_id]) >= 3

            spans = [s for s in receiver.wait_for(complete) if s.trace_id == trace_id]
    (user_server,) = [s for s in spans if s.service == "user-svc"]
    assert user_server.name == "GET /users/{pk}"
    assert user_server.attributes["http.request.method"] == "GET"
    assert user_server.attributes["url.path"] == "/users/424242"
    assert user_server.attributes["http.route"] == "/users/{pk}"
    assert user_server.attributes["http.response.status_code"] == 404
    assert "http.method" not in user_server.attributes and "http.status_code" not in user_server.attributes
    (client,) = [s for s in spans if s.kind == "CLIENT"]
    assert client.attributes["url.full"] == f"{user.url}/users/424242"
    assert (client.attributes["http.response.status_code"], client.status) == (404, "ERROR")
    (order_server,) = [s for s in spans if s.service == "order-svc" and s.kind == "SERVER"]
    assert order_server.name == "POST /orders"


def test_a_bad_host_gets_the_json_400_and_probes_and_scrapes_are_not_traced(traced, receiver):
    """The instrumentation's middleware would raise DisallowedHost itself (it builds the absolute URL
    to test its excluded URLs; opentelemetry-python-contrib#1781): placed after the Host check, a bad
    Host gets the service's own JSON 400 and its access line, and no span. /healthz, /readyz and
    /metrics are not traced; a request after them is."""
    user, _ = traced
    rid = request_id()
    response = requests.get(f"{user.url}/users/1", headers={"Host": "evil.example", "X-Request-ID": rid}, timeout=5)
    assert response.status_code == 400
    assert response.headers["Content-Type"].startswith("application/json")
    assert "ALLOWED_HOSTS" in response.json()["detail"]
    records = wait_for_records(user, lambda rs: access_lines(records_for(rs, rid)))
    (line,) = access_lines(records_for(records, rid))
    assert (line["status"], line.get("trace_id")) == (400, None)  # refused before any trace began

    for path in ("/healthz", "/readyz", "/metrics"):
        assert requests.get(f"{user.url}{path}", timeout=5).status_code == 200
    marker = request_id()
    requests.get(f"{user.url}/users/31337", headers={"X-Request-ID": marker}, timeout=5)
    marker_trace = trace_id_of(user, marker)
    spans = receiver.wait_for(lambda spans: any(s.trace_id == marker_trace for s in spans))
    user_spans = [s for s in spans if s.service == "user-svc"]
    assert not [
        s for s in user_spans if s.attributes.get("http.target", "").startswith(("/healthz", "/readyz", "/metrics"))
    ]
    assert not [s for s in user_spans if s.attributes.get("http.host") == "evil.example"]
