"""``TraceContextMiddleware`` (no exporter configured) against the stock piece it stands in for,
``DjangoInstrumentor`` (and ``carry_trace_context`` against ``RequestsInstrumentor``) on OpenTelemetry's
no-op tracer, on the same requests: the same trace headers on the outgoing call, the same ids on log
lines and on the access line, the same for excluded URLs, for requests with no or a broken context, for
a 404 and a 500. Each way runs in a process of its own (tests/svc_common/trace_context_app.py): both
install global state."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def served(way: str) -> dict:
    result = subprocess.run(
        [sys.executable, "-m", "tests.svc_common.trace_context_app", way],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


def test_the_propagation_middleware_carries_what_the_instrumentation_carries_on_the_no_op_tracer():
    stock, ours = served("instrumentor"), served("middleware")
    assert stock["middleware"][2] == "opentelemetry.instrumentation.django.middleware.otel_middleware._DjangoMiddleware"
    assert ours["middleware"][2] == "svc_common.observability.tracing.TraceContextMiddleware"
    assert (stock["requests_instrumented"], ours["requests_instrumented"]) == (True, False)
    assert ours["seen"] == stock["seen"]
    # And what they both do is the point: a W3C context, a B3 one, none, an excluded URL.
    w3c, b3, both, none, broken, query, healthz, missing, fail = ours["seen"]
    w3c_ids = {"trace_id": "0af7651916cd43dd8448eb211c80319c", "span_id": "b7ad6b7169203331"}
    assert w3c["body"]["log_line_ids"] == w3c_ids
    assert w3c["body"]["outgoing"]["traceparent"] == "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    assert w3c["body"]["outgoing"]["X-B3-TraceId"] == "0af7651916cd43dd8448eb211c80319c"
    assert w3c["body"]["outgoing"]["baggage"] == "tenant=a"
    assert json.loads(w3c["bound"]) == w3c["body"]["log_line_ids"]
    assert b3["body"]["outgoing"]["traceparent"] == "00-463ac35c9f6413ad48485a3953bb6124-a2fb4a1d1a96d312-01"
    assert both["body"]["log_line_ids"]["trace_id"] == "0af7651916cd43dd8448eb211c80319c"  # W3C wins
    for untraced in (none, broken):
        assert untraced["body"] == {"log_line_ids": {}, "outgoing": dict.fromkeys(untraced["body"]["outgoing"])}
        assert untraced["bound"] == "{}"
    assert query["body"]["log_line_ids"] == w3c["body"]["log_line_ids"]
    assert healthz["body"] == {"log_line_ids": {}} and healthz["bound"] == "{}"  # excluded: no context
    assert (missing["status"], json.loads(missing["bound"])["trace_id"]) == (404, "0af7651916cd43dd8448eb211c80319c")
    assert (fail["status"], json.loads(fail["bound"])["trace_id"]) == (500, "0af7651916cd43dd8448eb211c80319c")
