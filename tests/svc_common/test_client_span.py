"""svc_common.observability.tracing.client_span without an SDK (no OTLP endpoint): it carries on the trace context
a request came with (as from an Envoy sidecar), and adds nothing when there is none."""

from opentelemetry import baggage, context, propagate

from svc_common.observability.tracing import client_span, record_response

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
INCOMING = {"traceparent": f"00-{TRACE_ID}-b7ad6b7169203331-01"}


def call_headers() -> dict[str, str]:
    headers = {"Accept": "application/json"}
    with client_span("GET", "http://users.test/users/1", headers) as span:
        record_response(span, 200)
        assert not span.is_recording()
    return headers


def test_without_a_trace_to_carry_nothing_is_added():
    assert call_headers() == {"Accept": "application/json"}


def test_an_incoming_trace_is_carried_on():
    token = context.attach(propagate.extract(INCOMING))
    try:
        headers = call_headers()
    finally:
        context.detach(token)
    assert headers["traceparent"].split("-")[1] == TRACE_ID


def test_incoming_baggage_alone_is_carried_on():
    token = context.attach(baggage.set_baggage("tenant", "acme"))
    try:
        headers = call_headers()
    finally:
        context.detach(token)
    assert headers.get("baggage") == "tenant=acme"
