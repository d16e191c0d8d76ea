"""Prometheus' scrape configuration for the mesh, as the pods' annotations say once the injector has
rewritten them for metrics merging: every pod on ``:15020/stats/prometheus`` (agent.py: Envoy's
metrics and the app's, plaintext, never captured), the gateway on its Envoy's Prometheus listener;
each target labelled with its namespace, pod and app (the Kubernetes service discovery's place).
Envoy's Prometheus output names every stat ``envoy_<name>``; Istio's proxy leaves its own
``istio_*`` stats unprefixed, so the scrape renames ``envoy_istio_*`` back to ``istio_*``."""

from __future__ import annotations


def prometheus_config(state) -> dict:
    targets = [
        {"targets": [f"{p.address}:15020"], "labels": {"namespace": "meshed", "pod": p.name, "app": p.app}}
        for p in state.pods
        if p.sidecar
    ]
    targets.append(
        {
            "targets": [f"127.0.0.1:{state.gateway_ports['prometheus']}"],
            "labels": {"namespace": "istio-system", "pod": "istio-ingressgateway-0", "app": "istio-ingressgateway"},
        }
    )
    return {
        "global": {"scrape_interval": "2s", "evaluation_interval": "2s"},
        "scrape_configs": [
            {
                "job_name": "kubernetes-pods",
                "metrics_path": "/stats/prometheus",
                "static_configs": targets,
                "metric_relabel_configs": [
                    {
                        "source_labels": ["__name__"],
                        "regex": "envoy_(istio_.*)",
                        "target_label": "__name__",
                        "replacement": "$1",
                    }
                ],
            }
        ],
    }
