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

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # (metric, label values) -> that series. prometheus_client's labels() checks the names, turns
        # the values to strings and takes the metric's lock on every call: three calls were 3 % of a
        # GET's profile. The values come from bounded sets (view names, the known methods or
        # "<invalid method>", status codes, exception types), so this stays small.
        self._series: dict[tuple[Any, ...], Any] = {}

    def label_metric(self, metric: Any, request: HttpRequest, response: Any = None, **labels: str) -> Any:
        key = (metric, *labels.values())  # each metric is always labelled in the same order
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = metric.labels(**labels)
        return series

    def process_request(self, request: HttpRequest) -> None:
        request.prometheus_after_middleware_event = Time()  # type: ignore[attr-defined]

    def process_template_response(self, request: HttpRequest, response: HttpResponse) -> HttpResponse:
        return response

    def process_response(self, request: HttpRequest, response: HttpResponse) -> HttpResponse:
        view = self._get_view_name(request)
        method = self._method(request)
        self.label_metric(
            self.metrics.responses_by_status_view_method,
            request,
            status=str(response.status_code),
            view=view,
            method=method,
        ).inc()
        self._observe_latency(request, view, method)
        return response

    def process_exception(self, request: HttpRequest, exception: Exception) -> None:
        view = self._get_view_name(request)
        self.label_metric(self.metrics.exceptions_by_type, request, type=type(exception).__name__).inc()
        self.label_metric(self.metrics.exceptions_by_view, request, view=view).inc()

    def _observe_latency(self, request: HttpRequest, view: str, method: Any) -> None:
        started = getattr(request, "prometheus_after_middleware_event", None)
        if started is not None:
            self.label_metric(self.metrics.requests_latency_by_view_method, request, view=view, method=method).observe(
                TimeSince(started)
            )
