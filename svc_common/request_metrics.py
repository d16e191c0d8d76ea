"""django-prometheus' request metrics, only the families something reads.

django-prometheus' two middlewares update fifteen families per request (two of them histograms of
body sizes with thirty buckets each). The dashboards (grafana/) and alert rules (prometheus/) read
three: requests by view, responses by status and view, and latency by view; exceptions by type and
view cost nothing until something raises and say what broke. This middleware keeps those, with
django-prometheus' names, labels and buckets, so every query stays as it is.
"""

from typing import Any

from django.http import HttpRequest, HttpResponse
from django_prometheus.conf import NAMESPACE, PROMETHEUS_LATENCY_BUCKETS
from django_prometheus.middleware import Metrics, PrometheusAfterMiddleware
from django_prometheus.utils import Time, TimeSince
from prometheus_client import Counter, Histogram


class RequestMetrics(Metrics):  # type: ignore[misc]  # django-prometheus ships no type information
    def register(self) -> None:
        self.requests_by_view_transport_method = self.register_metric(
            Counter,
            "django_http_requests_total_by_view_transport_method",
            "Count of requests by view, transport, method.",
            ["view", "transport", "method"],
            namespace=NAMESPACE,
        )
        self.responses_by_status_view_method = self.register_metric(
            Counter,
            "django_http_responses_total_by_status_view_method",
            "Count of responses by status, view, method.",
            ["status", "view", "method"],
            namespace=NAMESPACE,
        )
        self.requests_latency_by_view_method = self.register_metric(
            Histogram,
            "django_http_requests_latency_seconds_by_view_method",
            "Histogram of request processing time labelled by view.",
            ["view", "method"],
            buckets=PROMETHEUS_LATENCY_BUCKETS,
            namespace=NAMESPACE,
        )
        self.exceptions_by_type = self.register_metric(
            Counter,
            "django_http_exceptions_total_by_type",
            "Count of exceptions by object type.",
            ["type"],
            namespace=NAMESPACE,
        )
        self.exceptions_by_view = self.register_metric(
            Counter,
            "django_http_exceptions_total_by_view",
            "Count of exceptions by view.",
            ["view"],
            namespace=NAMESPACE,
        )


class RequestMetricsMiddleware(PrometheusAfterMiddleware):  # type: ignore[misc]
    """First in MIDDLEWARE, so the latency covers every other middleware; counts requests by view
    as django-prometheus does (process_view), and the rest here."""

    metrics_cls = RequestMetrics

    def process_request(self, request: HttpRequest) -> None:
        request.prometheus_after_middleware_event = Time()  # type: ignore[attr-defined]

    def process_template_response(self, request: HttpRequest, response: HttpResponse) -> HttpResponse:
        return response

    def process_response(self, request: HttpRequest, response: HttpResponse) -> HttpResponse:
        view = self._get_view_name(request)
        method = self._method(request)
        self.metrics.responses_by_status_view_method.labels(
            status=str(response.status_code), view=view, method=method
        ).inc()
        self._observe_latency(request, view, method)
        return response

    def process_exception(self, request: HttpRequest, exception: Exception) -> None:
        view = self._get_view_name(request)
        self.metrics.exceptions_by_type.labels(type=type(exception).__name__).inc()
        self.metrics.exceptions_by_view.labels(view=view).inc()

    def _observe_latency(self, request: HttpRequest, view: str, method: Any) -> None:
        started = getattr(request, "prometheus_after_middleware_event", None)
        if started is not None:
            self.metrics.requests_latency_by_view_method.labels(view=view, method=method).observe(TimeSince(started))
