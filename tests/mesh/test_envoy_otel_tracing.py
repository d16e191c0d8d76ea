"""The services' traces join the sidecar's under Istio's OpenTelemetry provider (the deployed one), checked
with a real Envoy on loopback.

One Envoy plays the order pod's sidecar with Envoy's OpenTelemetry tracer (W3C ``traceparent``), as
Istio configures an ``opentelemetry`` provider: an INBOUND listener in front of the order service
(server spans) and an OUTBOUND listener for its call to the user service (client spans, routed as
istio/virtualservices.yaml says). Envoy and both services export OTLP to the same receiver; Envoy over
OTLP/HTTP (chunked protobuf), the services over OTLP/HTTP too:

    test -> Envoy inbound -> order service -> Envoy outbound -> user service
              |                 |                  |                |
              +-----------------+------ OTLP ------+----------------+

The services run with the default propagators (no OTEL_PROPAGATORS): they send B3 and W3C headers, and
extract W3C when both arrive. That matters on the user service's side: Envoy's OpenTelemetry tracer
rewrites only ``traceparent``, so the B3 headers the order service sent reach the user service
unchanged, still naming the order service's client span. Only W3C winning makes the user service's span
a child of the outbound sidecar's. The test sends no trace or request id header, so Envoy starts the
trace and makes the x-request-id.
"""

import re

import pytest

from mesh_rehearsal.otlp_receiver import OtlpReceiver
from testsupport.envoy import (
    OPENTELEMETRY_FLUSH_NOW,
    ORDER_SIDECAR,
    opentelemetry_tracing,
    order_sidecar_mesh,
    order_through_sidecar,
    static_cluster,
)
from testsupport.observability import assert_request_logged

UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


@pytest.fixture
def mesh(tmp_path, monkeypatch):
    """(envoy, order service, user service, OTLP receiver), all running."""
    monkeypatch.delenv("OTEL_PROPAGATORS", raising=False)  # the services' default propagators, as deployed
    with OtlpReceiver() as otlp:
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": otlp.url, "OTEL_BSP_SCHEDULE_DELAY": "200"}
        tracing = opentelemetry_tracing("otlp", otlp.url, service_name=ORDER_SIDECAR)
        with order_sidecar_mesh(
            tmp_path, tracing, static_cluster("otlp", otlp.port), env, runtime=OPENTELEMETRY_FLUSH_NOW
        ) as (envoy, order, user):
            yield envoy, order, user, otlp


def test_one_w3c_trace_and_one_request_id_through_envoy_and_both_services(mesh):
    envoy, order, user, otlp = mesh
    user_id = order_through_sidecar(envoy, user)

    def sidecar_spans(spans):
        """Envoy's inbound span for the order and its outbound span for the user check."""

        def url(span):
            return span.attributes.get("http.url", "")

        ours = [s for s in spans if s.service == ORDER_SIDECAR]
        ingress = [s for s in ours if s.kind == "SERVER" and url(s).endswith("/orders")]
        outbound = [s for s in ours if s.kind == "CLIENT" and url(s).endswith(f"/users/{user_id}")]
        return ingress, outbound

    def service_spans(spans, trace_id):
        return [s for s in spans if s.trace_id == trace_id and s.service in ("order-svc", "user-svc")]

    def complete(spans):
        ingress, outbound = sidecar_spans(spans)
        if not (ingress and outbound):
            return False
        kinds = {(s.service, s.kind) for s in service_spans(spans, ingress[0].trace_id)}
        return {("order-svc", "SERVER"), ("order-svc", "CLIENT"), ("user-svc", "SERVER")} <= kinds

    spans = otlp.wait_for(complete)
    (ingress,), (outbound,) = sidecar_spans(spans)
    assert ingress.parent_span_id == ""  # the client sent no trace context: Envoy started the trace
    trace_id = ingress.trace_id
    assert len(trace_id) == 32 and trace_id != "0" * 32
    assert outbound.trace_id == trace_id, "the outbound sidecar did not join the order service's trace"
    assert ingress.resource["service.name"] == outbound.resource["service.name"] == ORDER_SIDECAR
    assert ingress.attributes["upstream_cluster"] == "inbound-order-svc"
    assert outbound.attributes["upstream_cluster"] == "user-svc"

    in_trace = service_spans(spans, trace_id)
    (order_server,) = [s for s in in_trace if (s.service, s.kind) == ("order-svc", "SERVER")]
    (order_client,) = [s for s in in_trace if (s.service, s.kind) == ("order-svc", "CLIENT")]
    (user_server,) = [s for s in in_trace if (s.service, s.kind) == ("user-svc", "SERVER")]

    # The order service joined the context Envoy started (traceparent from the inbound sidecar) ...
    assert order_server.parent_span_id == ingress.span_id
    # ... and sent traceparent on, so the outbound sidecar's span is a child of the app's client span ...
    assert outbound.parent_span_id == order_client.span_id
    # ... and the user service took the outbound sidecar's traceparent over the order service's B3.
    assert user_server.parent_span_id == outbound.span_id
    # One chain rooted at Envoy: the trace has these five spans, each under the one before.
    by_id = {s.span_id: s for s in spans if s.trace_id == trace_id}
    chain = [user_server]
    while chain[-1].parent_span_id:
        chain.append(by_id[chain[-1].parent_span_id])
    assert chain == [user_server, outbound, order_client, order_server, ingress]
    assert len(by_id) == 5, sorted((s.service, s.kind, s.name) for s in by_id.values())

    # Envoy's spans came over OTLP/HTTP, protobuf, chunked (what the receiver must be able to read).
    envoy_posts = [r for r in otlp.requests if ORDER_SIDECAR in r["services"]]
    assert envoy_posts and all(
        r["transfer_encoding"] == "chunked"
        and r["content_type"] == "application/x-protobuf"
        and r["user_agent"].startswith("OTel-OTLP-Exporter-Envoy/")
        for r in envoy_posts
    )

    # The request id Envoy generated (the client sent none) is the one both services log.
    request_id = ingress.attributes["guid:x-request-id"]
    assert UUID.match(request_id), request_id
    assert outbound.attributes["guid:x-request-id"] == request_id
    assert_request_logged((order, user), request_id, trace_id)
    # What each sidecar listener sent on: the same request id, and a traceparent naming its own span.
    access = envoy.wait_for_access_records(lambda records: len(records) >= 2)
    assert {(r["listener"], r["request_id"], r["trace_id"], r["traceparent"]) for r in access} == {
        ("inbound", request_id, trace_id, f"00-{trace_id}-{ingress.span_id}-01"),
        ("outbound", request_id, trace_id, f"00-{trace_id}-{outbound.span_id}-01"),
    }
