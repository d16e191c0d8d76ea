"""Telemetry -> what every proxy's HTTP connection managers record: the access log (provider
``envoy``), the tracer (an ``opentelemetry`` provider with its sampling), and Istio's request metrics.

- Access logs (pilot/pkg/networking/core/accesslog.go, ``buildAccessLogFromTelemetry``): the built-in
  provider ``envoy`` writes to /dev/stdout in Istio's default format (``EnvoyTextLogFormat`` in
  pilot/pkg/model/telemetry_logging.go); here its JSON encoding (meshConfig.accessLogEncoding: JSON,
  the same fields), plus the ``x-forwarded-client-cert`` header the proxy forwards.
- Tracing (pilot/pkg/networking/core/tracing.go ``configureTracingFromTelemetry``): the provider from
  meshConfig.extensionProviders (istio/install/demo-tracing.yaml), ``random_sampling`` from the
  Telemetry's ``randomSamplingPercentage``, ``client_sampling`` and ``overall_sampling`` 100, the
  OpenTelemetry tracer with ``service_name`` ``<app>.<namespace>``. Istio's provider exports OTLP over
  gRPC to port 4317; here the same tracer exports OTLP/HTTP (``http_service``) to the receiver.
- Metrics: Istio's ``istio.stats`` filter (its own Envoy build only) records ``istio_requests_total``
  and ``istio_request_duration_milliseconds`` with the standard labels
  (https://istio.io/latest/docs/reference/config/metrics/). Upstream Envoy's stats access logger
  (``envoy.access_loggers.stats``) stands in for it: one counter and one histogram per request, their
  tags filled from the request as it ends. The caller's workload and namespace, which istio.stats
  learns from istio.metadata_exchange (the ``x-envoy-peer-metadata`` request headers), travel here in
  the headers ``PEER_HEADERS`` that each calling proxy adds and that the receiving sidecar moves into
  its dynamic metadata (``peer_metadata_filter``, Envoy's header_to_metadata filter, removing them
  before the app sees them); principals come from the peer certificate's URI SAN. Envoy's Prometheus
  output prefixes every stat with ``envoy_``; the scrape configuration strips it back
  (prometheus_config.py), which Istio's own metrics do not need.
"""

from __future__ import annotations

from .model import checked, envoy_duration

OPENTELEMETRY_TYPE = "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig"

FILE_LOG_TYPE = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"
STATS_LOG_TYPE = "type.googleapis.com/envoy.extensions.access_loggers.stats.v3.Config"
COLLECTOR_CLUSTER = "outbound|4318||otlp-receiver"
# Where the peer's identity rides (the stand-in for metadata exchange's x-envoy-peer-metadata headers).
PEER_WORKLOAD = "x-meshed-peer-workload"
PEER_NAMESPACE = "x-meshed-peer-namespace"
PEER_HEADERS = (PEER_WORKLOAD, PEER_NAMESPACE)
PEER_METADATA = "istio.peer"  # the dynamic metadata namespace the inbound sidecar keeps them in
HEADER_TO_METADATA_TYPE = "type.googleapis.com/envoy.extensions.filters.http.header_to_metadata.v3.Config"


def peer_metadata_filter() -> dict:
    """Inbound: the caller's PEER_HEADERS into dynamic metadata (``istio.peer``: workload, namespace)."""
    return {
        "name": "envoy.filters.http.header_to_metadata",
        "typed_config": {
            "@type": HEADER_TO_METADATA_TYPE,
            "request_rules": [
                {
                    "header": header,
                    "on_header_present": {"metadata_namespace": PEER_METADATA, "key": key, "type": "STRING"},
                    "remove": True,
                }
                for header, key in ((PEER_WORKLOAD, "workload"), (PEER_NAMESPACE, "namespace"))
            ],
        },
    }


# pilot/pkg/model/telemetry_logging.go EnvoyJSONLogFormatIstio (the default JSON access log fields).
ACCESS_LOG_JSON = {
    "start_time": "%START_TIME%",
    "method": "%REQ(:METHOD)%",
    "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
    "protocol": "%PROTOCOL%",
    "response_code": "%RESPONSE_CODE%",
    "response_flags": "%RESPONSE_FLAGS%",
    "response_code_details": "%RESPONSE_CODE_DETAILS%",
    "connection_termination_details": "%CONNECTION_TERMINATION_DETAILS%",
    "upstream_transport_failure_reason": "%UPSTREAM_TRANSPORT_FAILURE_REASON%",
    "bytes_received": "%BYTES_RECEIVED%",
    "bytes_sent": "%BYTES_SENT%",
    "duration": "%DURATION%",
    "upstream_service_time": "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%",
    "x_forwarded_for": "%REQ(X-FORWARDED-FOR)%",
    "user_agent": "%REQ(USER-AGENT)%",
    "request_id": "%REQ(X-REQUEST-ID)%",
    "authority": "%REQ(:AUTHORITY)%",
    "upstream_host": "%UPSTREAM_HOST%",
    "upstream_cluster": "%UPSTREAM_CLUSTER_RAW%",
    "upstream_local_address": "%UPSTREAM_LOCAL_ADDRESS%",
    "downstream_local_address": "%DOWNSTREAM_LOCAL_ADDRESS%",
    "downstream_remote_address": "%DOWNSTREAM_REMOTE_ADDRESS%",
    "requested_server_name": "%REQUESTED_SERVER_NAME%",
    "route_name": "%ROUTE_NAME%",
    # Not in Istio's format: what the sidecar forwards to its app as the caller's certificate.
    "x_forwarded_client_cert": "%REQ(X-FORWARDED-CLIENT-CERT)%",
}


def access_log(path: str = "/dev/stdout") -> dict:
    return {
        "name": "envoy.access_loggers.file",
        "typed_config": {"@type": FILE_LOG_TYPE, "path": path, "log_format": {"json_format": ACCESS_LOG_JSON}},
    }


def access_logs(
    telemetries: list[dict],
    namespace: str,
    labels: dict,
    mesh_access_log_file: str | None = None,
    root_namespace: str = "istio-system",
) -> list[dict]:
    """The access loggers of a workload: from the most specific Telemetry with ``accessLogging``
    (workload selector > its namespace > the root namespace, as pilot/pkg/model/telemetry.go
    ``applicableTelemetries`` ranks them), else meshConfig.accessLogFile when set (the gateway here:
    istio/telemetry.yaml is the meshed namespace's). Only the built-in provider ``envoy`` is translated."""
    ranked = []
    for telemetry in telemetries:
        spec = telemetry.get("spec") or {}
        if "accessLogging" not in spec:
            continue
        checked(spec, {"selector", "accessLogging", "tracing"}, f"Telemetry {telemetry['metadata']['name']}")
        own = telemetry["metadata"].get("namespace") == namespace
        selector = (spec.get("selector") or {}).get("matchLabels")
        if own and selector:
            if all(labels.get(k) == v for k, v in selector.items()):
                ranked.append((0, spec["accessLogging"]))
        elif own:
            ranked.append((1, spec["accessLogging"]))
        elif telemetry["metadata"].get("namespace") == root_namespace and not selector:
            ranked.append((2, spec["accessLogging"]))
    if not ranked:
        return [access_log(mesh_access_log_file)] if mesh_access_log_file else []
    loggers = []
    for entry in min(ranked, key=lambda r: r[0])[1]:
        checked(entry, {"providers"}, "Telemetry accessLogging")
        for provider in entry.get("providers", []):
            if provider["name"] != "envoy":
                raise NotImplementedError(f"access log provider {provider['name']}: only 'envoy' is translated")
            loggers.append(access_log())
    return loggers


def tracing_settings(telemetries: list[dict], providers: dict[str, dict]) -> tuple[str, float] | None:
    """(provider name, sampling percentage) from the mesh-wide Telemetry (root namespace), or None."""
    for telemetry in telemetries:
        for tracing in (telemetry.get("spec") or {}).get("tracing", []):
            checked(tracing, {"providers", "randomSamplingPercentage"}, "Telemetry tracing")
            (provider,) = tracing["providers"]
            if provider["name"] not in providers:
                raise NotImplementedError(
                    f"tracing provider {provider['name']} is not in meshConfig.extensionProviders"
                )
            return provider["name"], float(tracing.get("randomSamplingPercentage", 1.0))
    return None


def hcm_tracing(service_name: str, sampling: float, collector_url: str) -> dict:
    return {
        "client_sampling": {"value": 100.0},
        "random_sampling": {"value": sampling},
        "overall_sampling": {"value": 100.0},
        "provider": {
            "name": "envoy.tracers.opentelemetry",
            "typed_config": {
                "@type": OPENTELEMETRY_TYPE,
                "service_name": service_name,
                "http_service": {
                    "http_uri": {
                        "uri": f"{collector_url}/v1/traces",
                        "cluster": COLLECTOR_CLUSTER,
                        "timeout": envoy_duration(1.0),
                    },
                },
            },
        },
    }


def _tag(name: str, value_format: str) -> dict:
    return {"name": name, "value_format": value_format}


def request_metrics(reporter: str, workload: str, namespace: str, principal: str, service: str = "") -> dict:
    """The stats access logger recording istio_requests_total and istio_request_duration_milliseconds
    for a proxy of ``workload`` reporting as ``source`` (outbound, gateway) or ``destination`` (inbound,
    for ``service``, the workload's Service host)."""
    if reporter == "destination":
        source_workload = f"%DYNAMIC_METADATA({PEER_METADATA}:workload)%"
        source_namespace = f"%DYNAMIC_METADATA({PEER_METADATA}:namespace)%"
        source_principal = "%DOWNSTREAM_PEER_URI_SAN%"
        destination_workload, destination_namespace, destination_principal = workload, namespace, principal
        destination_service = service
    else:
        source_workload, source_namespace, source_principal = workload, namespace, principal
        destination_workload = "%CLUSTER_METADATA(istio:workload)%"
        destination_namespace = "%CLUSTER_METADATA(istio:namespace)%"
        destination_principal = "%UPSTREAM_PEER_URI_SAN%"
        destination_service = "%CLUSTER_METADATA(istio:service)%"
    tags = [
        _tag("reporter", reporter),
        _tag("source_workload", source_workload),
        _tag("source_workload_namespace", source_namespace),
        _tag("source_principal", source_principal),
        _tag("source_app", source_workload),
        _tag("destination_workload", destination_workload),
        _tag("destination_workload_namespace", destination_namespace),
        _tag("destination_principal", destination_principal),
        _tag("destination_service", destination_service),
        _tag("destination_service_name", destination_workload),
        _tag("destination_app", destination_workload),
        _tag("request_protocol", "http"),
        _tag("response_code", "%RESPONSE_CODE%"),
        _tag("response_flags", "%RESPONSE_FLAGS%"),
        _tag("connection_security_policy", "mutual_tls" if reporter == "destination" else "unknown"),
    ]
    return {
        "name": "envoy.access_loggers.stats",
        "typed_config": {
            "@type": STATS_LOG_TYPE,
            "stats_scope": {},
            "counters": [{"stat": {"name": "istio_requests_total", "tags": tags}, "value_fixed": 1}],
            "histograms": [
                {
                    "stat": {"name": "istio_request_duration_milliseconds", "tags": tags},
                    "unit": "Milliseconds",
                    "value_format": "%DURATION%",
                }
            ],
        },
    }
