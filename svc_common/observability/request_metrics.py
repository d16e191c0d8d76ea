"""django-prometheus' request metrics, only the families something reads.

django-prometheus' two middlewares update fifteen families per request (two of them histograms of
body sizes with thirty buckets each). The dashboards (grafana/) and alert rules (prometheus/) read
three: requests by view, responses by status and view, and latency by view; exceptions by type and
view cost nothing until something raises and say what broke. These middlewares keep those, with
django-prometheus' names, labels and buckets, so every query stays as it is, and measure the latency
where django-prometheus does: ``django_http_requests_latency_seconds_by_view_method`` is timed by its
PrometheusAfterMiddleware, last in MIDDLEWARE, from its ``process_request`` to its ``process_response``
(URL resolution, the view and its exception handling; none of the other middlewares), so it is here
(``ViewLatencyMiddleware``, last in MIDDLEWARE).
"""

import time
from collections.abc import Callable
from typing import Any

from django.http import HttpRequest, HttpResponseBase
from django_prometheus.conf import NAMESPACE, PROMETHEUS_LATENCY_BUCKETS
from django_prometheus.middleware import Metrics
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


class SeriesCache:
    """``labels()`` checks the names, turns the values to strings and takes the metric's lock on every
    call; the series are kept here instead, keyed by their label values, which come from bounded sets
    (view names, the known methods or "<invalid method>", status codes, exception types, http or https)."""

    def __init__(self) -> None:
        self.metrics = RequestMetrics.get_instance()
        self._series: dict[tuple[Any, ...], Any] = {}

    def series(self, metric: Any, *label_values: Any) -> Any:
        """The metric's child for these label values, in the order of its label names."""
        key = (metric, *label_values)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = metric.labels(*(str(value) for value in label_values))
        return series


class RequestMetricsMiddleware(SeriesCache):
    """First in MIDDLEWARE, so every request is counted, whichever middleware answers it. Counts
    requests by view as django-prometheus' PrometheusAfterMiddleware does (process_view), responses
    by status and view on the way out, exceptions by type and view.

    A plain middleware rather than that class: its MiddlewareMixin hooks, its label checks and the
    fifteen families' plumbing were most of the cost of keeping three (about 8 % of a GET's
    instructions, counted)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        super().__init__()
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        response = self.get_response(request)
        view, method = view_name(request), known_method(request)
        self.series(self.metrics.responses_by_status_view_method, response.status_code, view, method).inc()
        return response

    def process_view(self, request: HttpRequest, *_: Any) -> None:
        transport = "https" if request.is_secure() else "http"
        self.series(
            self.metrics.requests_by_view_transport_method, view_name(request), transport, known_method(request)
        ).inc()

    def process_exception(self, request: HttpRequest, exception: Exception) -> None:
        self.series(self.metrics.exceptions_by_type, type(exception).__name__).inc()
        self.series(self.metrics.exceptions_by_view, view_name(request)).inc()


class ViewLatencyMiddleware(SeriesCache):
    """Last in MIDDLEWARE, where django-prometheus' PrometheusAfterMiddleware is: the latency by view
    from there on (URL resolution, the view, a raised exception turned into its response), once per
    request that gets this far. A request another middleware answers (a bad Host, a body too large,
    a static file) is not timed, as with django-prometheus. Unlike it, a view that raises is timed
    once, not twice (its process_exception and process_response both observe)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        super().__init__()
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        started = time.perf_counter()
        response = self.get_response(request)
        elapsed = time.perf_counter() - started
        self.series(self.metrics.requests_latency_by_view_method, view_name(request), known_method(request)).observe(
            elapsed
        )
        return response


# What django-prometheus labels a method it does not know (any other would make a new series).
_KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "TRACE", "OPTIONS", "CONNECT", "PATCH"})


def known_method(request: HttpRequest) -> str:
    method = request.method or ""
    return method if method in _KNOWN_METHODS else "<invalid method>"


def view_name(request: HttpRequest) -> str:
    match = getattr(request, "resolver_match", None)
    return (match.view_name if match is not None else None) or "<unnamed view>"
