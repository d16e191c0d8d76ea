"""`kubectl apply -k prometheus/` loads the alert rules and the CloudNativePG scrape job into the
cluster's Prometheus (Istio's addon), and that job gives the series the labels the rules group by.

The ConfigMap is rendered with kubectl and compared with the files it comes from; the job
cnpg-instances then runs in a real Prometheus against three fake instance exporters on loopback,
with the pod metadata Kubernetes service discovery would give CloudNativePG's pods (labels
cnpg.io/cluster, cnpg.io/instanceRole, cnpg.io/podRole; the container port named `metrics`), and
the rendered rules are evaluated on what it scrapes.
"""

from __future__ import annotations

import contextlib
import http.server
import shutil
import subprocess
import threading
import time

import yaml

from .dashboards import REPO_ROOT
from .prom import start_prometheus

PROM_DIR = REPO_ROOT / "prometheus"
ADDON_JOB = PROM_DIR / "istio-addon-kubernetes-pods.yml"


def kubectl() -> str:
    candidate = REPO_ROOT / ".venv" / "bin" / "kubectl"
    found = str(candidate) if candidate.exists() else shutil.which("kubectl")
    assert found, "kubectl not found: pip install -r requirements/test.txt"
    return found


def rendered_configmap() -> dict:
    text = subprocess.run([kubectl(), "kustomize", str(PROM_DIR)], check=True, capture_output=True, text=True).stdout
    (configmap,) = [doc for doc in yaml.safe_load_all(text) if doc]
    return configmap


def test_the_addons_configmap_carries_our_rules_and_its_own_config():
    configmap = rendered_configmap()
    assert configmap["kind"] == "ConfigMap"
    # The addon's Deployment mounts exactly this ConfigMap (samples/addons/prometheus.yaml).
    assert (configmap["metadata"]["name"], configmap["metadata"]["namespace"]) == ("prometheus", "istio-system")
    data = configmap["data"]
    assert set(data) == {"prometheus.yml", "alerting_rules.yml", "recording_rules.yml", "rules", "alerts"} | {
        "allow-snippet-annotations"
    }
    assert data["alerting_rules.yml"] == (PROM_DIR / "alerts.yml").read_text()
    assert data["prometheus.yml"] == (PROM_DIR / "addon" / "prometheus.yml").read_text()
    config = yaml.safe_load(data["prometheus.yml"])
    assert "/etc/config/alerting_rules.yml" in config["rule_files"]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    # The addon's own pod job, unchanged: the copy the dashboards are replayed against.
    assert [jobs["kubernetes-pods"]] == yaml.safe_load(ADDON_JOB.read_text())
    assert "cnpg-instances" in jobs


class FakeExporter(http.server.ThreadingHTTPServer):
    """Serves fixed Prometheus text as /metrics (one CloudNativePG instance's exporter)."""

    def __init__(self, body: str):
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                payload = body.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return self.server_address[1]


def exposition(streaming: int, in_recovery: int) -> str:
    return (
        "# TYPE cnpg_pg_replication_streaming_replicas gauge\n"
        f"cnpg_pg_replication_streaming_replicas {streaming}\n"
        "# TYPE cnpg_pg_replication_in_recovery gauge\n"
        f"cnpg_pg_replication_in_recovery {in_recovery}\n"
        "# TYPE cnpg_pg_replication_lag gauge\n"
        "cnpg_pg_replication_lag 0\n"
        "# TYPE cnpg_collector_sync_replicas gauge\n"
        + ('cnpg_collector_sync_replicas{value="observed"} 1\n' if not in_recovery else "")
        + 'cnpg_collector_sync_replicas{value="expected"} 1\n'
    )


def pod_meta(pod: str, role: str, port_name: str, pod_role: str = "instance") -> dict[str, str]:
    """__meta_kubernetes_* labels Kubernetes SD gives one container port of a CloudNativePG pod."""
    return {
        "__meta_kubernetes_namespace": "meshed",
        "__meta_kubernetes_pod_name": pod,
        "__meta_kubernetes_pod_phase": "Running",
        "__meta_kubernetes_pod_container_port_name": port_name,
        "__meta_kubernetes_pod_label_cnpg_io_cluster": "meshed-pg",
        "__meta_kubernetes_pod_label_cnpg_io_instanceRole": role,
        "__meta_kubernetes_pod_label_cnpg_io_podRole": pod_role,
    }


def test_cnpg_job_labels_the_instances_as_the_rules_expect(tmp_path):
    data = rendered_configmap()["data"]
    (job,) = [j for j in yaml.safe_load(data["prometheus.yml"])["scrape_configs"] if j["job_name"] == "cnpg-instances"]
    assert job["kubernetes_sd_configs"] == [{"role": "pod"}]
    # The primary lost both standbys: the rules must see it on the primary, by its labels.
    exporters = {
        "meshed-pg-1": FakeExporter(exposition(streaming=0, in_recovery=0)),
        "meshed-pg-2": FakeExporter(exposition(streaming=0, in_recovery=1)),
        "meshed-pg-3": FakeExporter(exposition(streaming=0, in_recovery=1)),
    }
    postgres_port = FakeExporter(exposition(streaming=2, in_recovery=0))  # must not be scraped
    job_pod = FakeExporter(exposition(streaming=2, in_recovery=0))  # an initdb Job's pod: not an instance
    with contextlib.ExitStack() as stack:
        for server in (*exporters.values(), postgres_port, job_pod):
            server.thread.start()
            stack.callback(server.shutdown)
        del job["kubernetes_sd_configs"]
        job["static_configs"] = [
            {
                "targets": [f"127.0.0.1:{server.port}"],
                "labels": pod_meta(pod, "primary" if pod == "meshed-pg-1" else "replica", "metrics"),
            }
            for pod, server in exporters.items()
        ] + [
            {
                "targets": [f"127.0.0.1:{postgres_port.port}"],
                "labels": pod_meta("meshed-pg-1", "primary", "postgresql"),
            },
            {"targets": [f"127.0.0.1:{job_pod.port}"], "labels": pod_meta("meshed-pg-1-initdb-x", "", "metrics", "")},
        ]
        job["scrape_interval"] = "1s"
        rules = tmp_path / "alerting_rules.yml"
        rules.write_text(data["alerting_rules.yml"])
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(rules)],
            "scrape_configs": [job],
        }
        with start_prometheus(tmp_path / "prom", 0, 0, config_text=yaml.safe_dump(config)) as prometheus:
            prometheus.wait_for_targets_up(["cnpg-instances"], timeout=30)
            targets = [t for t in prometheus.targets() if t["labels"]["job"] == "cnpg-instances"]
            assert sorted(t["labels"]["pod"] for t in targets) == sorted(exporters)
            for target in targets:
                labels = target["labels"]
                assert (labels["namespace"], labels["cluster"]) == ("meshed", "meshed-pg")
                assert labels["role"] == ("primary" if labels["pod"] == "meshed-pg-1" else "replica")
            deadline = time.monotonic() + 30
            alerts: list = []
            while time.monotonic() < deadline:
                alerts = prometheus.query('ALERTS{alertname="CNPGNoSynchronousStandby"}')["result"]
                if alerts:
                    break
                time.sleep(0.5)
            assert [a["metric"]["pod"] for a in alerts] == ["meshed-pg-1"], alerts
            assert alerts[0]["metric"]["cluster"] == "meshed-pg" and alerts[0]["metric"]["alertstate"] == "pending"
