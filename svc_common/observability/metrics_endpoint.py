"""Metrics every service exports besides django-prometheus' own."""

import contextlib
import os
from collections.abc import Iterator

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django_prometheus.exports import ExportToDjangoView
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, generate_latest, multiprocess
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

BUILD_INFO = Gauge(
    "app_build_info",
    "Always 1; labels name the running service, its version and environment.",
    ["service", "version", "env"],
    multiprocess_mode="max",
)


def publish_build_info() -> None:
    BUILD_INFO.labels(settings.SERVICE_NAME, settings.SERVICE_VERSION, settings.DEPLOY_ENV).set(1)


class ProcessGroupCollector:
    """process_* metrics for the whole gunicorn group (master and workers), summed.

    In multiprocess mode prometheus_client drops its per-process collector, since a scrape is
    answered by one worker of several; the resources dashboard still needs CPU, memory and fds.
    """

    def __init__(self, master_pid: int):
        self.master_pid = master_pid
        self.ticks = os.sysconf("SC_CLK_TCK")
        self.page_size = os.sysconf("SC_PAGE_SIZE")

    def _group(self) -> list[int]:
        pids = [self.master_pid]
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                stat = _read_stat(int(entry))
                if stat and int(stat[1]) == self.master_pid:
                    pids.append(int(entry))
        return pids

    def collect(self) -> Iterator[Metric]:
        cpu = memory = fds = 0.0
        for pid in self._group():
            stat = _read_stat(pid)
            if stat is None:
                continue  # the process ended between listing and reading
            cpu += (int(stat[11]) + int(stat[12])) / self.ticks
            memory += int(stat[21]) * self.page_size
            with contextlib.suppress(OSError):
                fds += len(os.listdir(f"/proc/{pid}/fd"))
        yield GaugeMetricFamily("process_resident_memory_bytes", "Resident memory of the gunicorn group.", memory)
        yield CounterMetricFamily("process_cpu_seconds", "CPU time of the gunicorn group.", cpu)
        yield GaugeMetricFamily("process_open_fds", "Open file descriptors of the gunicorn group.", fds)


def _read_stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (index 0 is the state), or None."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()
    except OSError:
        return None


def metrics_view(request: HttpRequest) -> HttpResponse:
    """django-prometheus' exporter, plus the process group's resources in multiprocess mode."""
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        response: HttpResponse = ExportToDjangoView(request)
        return response
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]  # registers itself
    if os.path.isdir("/proc"):
        registry.register(ProcessGroupCollector(os.getppid()))
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
