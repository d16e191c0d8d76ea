"""What opentelemetry-instrumentation-requests costs a call on OpenTelemetry's no-op tracer (no exporter
configured), against injecting the same trace headers with ``propagate.inject``: the figures behind
``svc_common.observability.tracing.carry_trace_context`` (docs/benchmarks.md).

A local HTTP server on loopback answers a small JSON body; a ``requests.Session`` sends a prepared GET
``--calls`` times (after a warm-up), first as it is, then with ``RequestsInstrumentor`` installed.
Reported: process CPU per call (client and server threads together: the same server work both ways).

    .venv/bin/python bench/client_propagation.py --calls 3000
"""

import argparse
import http.server
import socketserver
import threading
import time
import timeit

import requests
from opentelemetry import context, propagate
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.propagators.b3 import B3MultiFormat
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from requests.adapters import HTTPAdapter


class Answer(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = b'{"id":1}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True


def cpu_per_call(session: requests.Session, prepared: requests.PreparedRequest, calls: int) -> float:
    for _ in range(calls // 10):
        session.send(prepared.copy(), timeout=2, allow_redirects=False)
    started = time.process_time()
    for _ in range(calls):
        session.send(prepared.copy(), timeout=2, allow_redirects=False)
    return (time.process_time() - started) / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=3000)
    args = parser.parse_args()
    server = Server(("127.0.0.1", 0), Answer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/users/1"
    session = requests.Session()
    session.trust_env = False
    session.mount("http://", HTTPAdapter(pool_maxsize=10, pool_block=True, max_retries=0))
    prepared = requests.Request("GET", url, headers={"Accept": "application/json"}).prepare()
    # The services' propagators, and an incoming W3C context, current as the propagation middleware makes it.
    propagate.set_global_textmap(
        CompositePropagator([B3MultiFormat(), TraceContextTextMapPropagator(), W3CBaggagePropagator()])
    )
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    token = context.attach(propagate.extract({"traceparent": traceparent}))
    try:
        plain = cpu_per_call(session, prepared, args.calls)
        inject = timeit.timeit(lambda: propagate.inject({}), number=20_000) / 20_000 * 1e6
        from opentelemetry.instrumentation.requests import RequestsInstrumentor

        RequestsInstrumentor().instrument()
        instrumented = cpu_per_call(session, prepared, args.calls)
    finally:
        context.detach(token)
        server.shutdown()
    print(f"Session.send, CPU per call: {plain:.0f} us as it is, {instrumented:.0f} us instrumented (no-op tracer)")
    print(f"propagate.inject of the same headers: {inject:.1f} us")


if __name__ == "__main__":
    main()
