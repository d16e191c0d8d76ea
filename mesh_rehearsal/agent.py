"""What pilot-agent serves on 15020 that the rehearsal needs: Istio's metrics merging.

With ``meshConfig.enablePrometheusMerge`` (the default, istio/install/demo-tracing.yaml), the sidecar
injector rewrites a pod's ``prometheus.io/port``/``path`` annotations to ``15020`` and
``/stats/prometheus`` and keeps the originals in the proxy's ``ISTIO_PROMETHEUS_ANNOTATIONS``
environment (pkg/kube/inject/inject.go); pilot-agent then answers ``/stats/prometheus`` with Envoy's
own metrics followed by the app's, which it fetches from the pod's loopback as uid 1337, which the
capture never redirects (pkg/istio-agent/status/server.go ``handleStats``). So Prometheus gets the
app's ``/metrics`` through a port Envoy does not intercept, and STRICT mTLS never sees the scrape.

This serves the same on 15020 (and nothing else of pilot-agent: no health rewrite, no DNS proxy, no
SDS server), with the standard library, in its own container in the pod (uid 1337, no capabilities).

    python -m mesh_rehearsal.agent     # reads ISTIO_PROMETHEUS_ANNOTATIONS
"""

from __future__ import annotations

import json
import os
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

STATUS_PORT = 15020
ENVOY_STATS = "http://127.0.0.1:15000/stats/prometheus"
TEXT_FORMAT = "text/plain; version=0.0.4; charset=utf-8"


def app_metrics_url(annotations: dict) -> str | None:
    """The app's own scrape target, from the annotations the injector kept (None: nothing to merge)."""
    if str(annotations.get("scrape", "")).lower() != "true":
        return None
    path = annotations.get("path", "/metrics")
    return f"http://127.0.0.1:{annotations.get('port', '80')}{path}"


def _fetch(url: str) -> bytes:
    request = urllib.request.Request(url, headers={"Accept": "text/plain"})
    with urllib.request.urlopen(request, timeout=5) as response:
        return response.read()


def merged_metrics(app_url: str | None) -> tuple[bytes, bool]:
    """Envoy's metrics, then the app's; the app's failure leaves Envoy's alone (pilot-agent counts it
    in ``istio_agent_scrape_failures_total`` and answers with what it has). (body, app scraped)."""
    body = _fetch(ENVOY_STATS)
    if not body.endswith(b"\n"):
        body += b"\n"
    if app_url is None:
        return body, False
    try:
        return body + _fetch(app_url), True
    except OSError:
        return body, False


def make_handler(app_url: str | None):
    class StatusHandler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            if self.path.split("?")[0] != "/stats/prometheus":
                self.send_error(404)
                return
            try:
                body, _ = merged_metrics(app_url)
            except OSError as exc:  # Envoy itself is not answering
                self.send_error(503, str(exc))
                return
            self.send_response(200)
            self.send_header("Content-Type", TEXT_FORMAT)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return StatusHandler


def main() -> int:
    annotations = json.loads(os.environ.get("ISTIO_PROMETHEUS_ANNOTATIONS") or "{}")
    server = ThreadingHTTPServer(("0.0.0.0", STATUS_PORT), make_handler(app_metrics_url(annotations)))
    server.daemon_threads = True
    server.serve_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
