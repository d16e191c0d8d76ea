"""The services' traces join the sidecar's, checked with a real Envoy on loopback.

One Envoy plays the order pod's sidecar, as Istio configures it with a Zipkin/Jaeger (B3) tracing
provider: an INBOUND listener in front of the order service (server spans) and an OUTBOUND listener
for its call to the user service (client spans, routed as istio/virtualservices.yaml says). Envoy's
spans go to a Zipkin collector, the services' spans over OTLP to a receiver:

    test -> Envoy inbound -> order service -> Envoy outbound -> user service
              |                 |                  |                |
              +---- Zipkin -----|------------------+                |
                                +------------- OTLP ----------------+

The test sends no trace or request id header, so Envoy starts the trace and makes the x-request-id.
"""

import re

import pytest

from mesh_rehearsal.otlp_receiver import OtlpReceiver
from testsupport.envoy import (
    ORDER_SIDECAR,
    ZIPKIN_FLUSH_NOW,
    order_sidecar_mesh,
    order_through_sidecar,
    static_cluster,
    zipkin_tracing,
)
from testsupport.observability import assert_request_logged
from testsupport.zipkin_collector import ZipkinCollector

UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


@pytest.fixture
def mesh(tmp_path):
    """(envoy, order service, user service, zipkin collector, OTLP receiver), all running."""
    with ZipkinCollector() as zipkin, OtlpReceiver() as otlp:
        # B3 only, as the README advises with Istio's Zipkin tracer: it rewrites only the x-b3-* headers.
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": otlp.url, "OTEL_BSP_SCHEDULE_DELAY": "200", "OTEL_PROPAGATORS": "b3multi"}
        with order_sidecar_mesh(
            tmp_path, zipkin_tracing("zipkin"), static_cluster("zipkin", zipkin.port), env, runtime=ZIPKIN_FLUSH_NOW
        ) as (envoy, order, user):
            yield envoy, order, user, zipkin, otlp


def ancestors(span_id: str, parents: dict[str, str]):
    while span_id in parents:
        span_id = parents[span_id]
        yield span_id


def test_one_trace_and_one_request_id_through_envoy_and_both_services(mesh):
    envoy, order, user, zipkin, otlp = mesh
    user_id = order_through_sidecar(envoy, user)

    def sidecar_spans(spans):
        """Envoy's inbound span for the order and its outbound span for the user check."""

        def url(span):
            return span.get("tags", {}).get("http.url", "")

        ingress = [s for s in spans if s.get("kind") == "SERVER" and url(s).endswith("/orders")]
        outbound = [s for s in spans if s.get("kind") == "CLIENT" and url(s).endswith(f"/users/{user_id}")]
        return ingress, outbound

    (ingress,), (outbound,) = sidecar_spans(zipkin.wait_for(lambda spans: all(sidecar_spans(spans))))
    assert "parentId" not in ingress  # the client sent no trace context: Envoy started the trace
    trace_id = ingress["traceId"]
    assert outbound["traceId"] == trace_id, "the outbound sidecar did not join the order service's trace"
    assert len(trace_id) == 32  # 128-bit, like the services' own ids
    assert {s["localEndpoint"]["serviceName"] for s in (ingress, outbound)} == {ORDER_SIDECAR}
    assert outbound["tags"]["upstream_cluster"] == "user-svc"

    def service_spans(spans):
        kinds = {(s.service, s.kind) for s in spans if s.trace_id == trace_id}
        return {("order-svc", "SERVER"), ("order-svc", "CLIENT"), ("user-svc", "SERVER")} <= kinds

    in_trace = [s for s in otlp.wait_for(service_spans) if s.trace_id == trace_id]
    (order_server,) = [s for s in in_trace if (s.service, s.kind) == ("order-svc", "SERVER")]
    (order_client,) = [s for s in in_trace if (s.service, s.kind) == ("order-svc", "CLIENT")]
    (user_server,) = [s for s in in_trace if (s.service, s.kind) == ("user-svc", "SERVER")]

    # The order service joined the context Envoy started (B3 from the inbound sidecar) ...
    assert order_server.parent_span_id == ingress["id"]
    # ... and forwarded B3, so the outbound sidecar's span is a child of the app's client span.
    assert outbound["parentId"] == order_client.span_id
    # ... and the user service joined the outbound sidecar's span: every hop parents the next.
    assert user_server.parent_span_id == outbound["id"]
    parents = {s.span_id: s.parent_span_id for s in in_trace if s.parent_span_id}
    parents.update({s["id"]: s["parentId"] for s in (ingress, outbound) if s.get("parentId")})
    assert list(ancestors(user_server.span_id, parents))[-1] == ingress["id"]  # one tree, rooted at Envoy

    # The request id Envoy generated (the client sent none) is the one both services log.
    request_id = ingress["tags"]["guid:x-request-id"]
    assert UUID.match(request_id), request_id
    assert outbound["tags"]["guid:x-request-id"] == request_id
    assert_request_logged((order, user), request_id, trace_id)
    access = envoy.wait_for_access_records(lambda records: len(records) >= 2)
    assert {(r["listener"], r["request_id"], r["b3_trace_id"]) for r in access} == {
        ("inbound", request_id, trace_id),
        ("outbound", request_id, trace_id),
    }
