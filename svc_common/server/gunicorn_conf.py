"""Gunicorn settings for both services, from the environment.

Used as ``gunicorn -c python:svc_common.server.gunicorn_conf``."""

import os
import shutil
import sys
import tempfile
from typing import Any

from svc_common.env import env_int
from svc_common.server import gunicorn_errors
from svc_common.server.gunicorn_logging import gunicorn_logconfig_dict

gunicorn_errors.install()  # in the master, so every forked worker answers protocol errors as JSON

port = env_int("PORT", 8000, minimum=1)
# All interfaces by default: in a pod the sidecar delivers traffic to the pod's address, not loopback.
bind = os.environ.get("BIND") or f"0.0.0.0:{port}"
workers = env_int("GUNICORN_WORKERS", 1, minimum=1)
# gevent (svc_common.server.gunicorn_worker says why): each worker serves up to this many connections at once.
worker_class = "svc_common.server.gunicorn_worker.FairGeventWorker"
worker_connections = env_int("GUNICORN_WORKER_CONNECTIONS", 1000, minimum=1)
timeout = env_int("GUNICORN_TIMEOUT", 30, minimum=1)
graceful_timeout = env_int("GUNICORN_GRACEFUL_TIMEOUT", 20, minimum=0)
keepalive = env_int("GUNICORN_KEEPALIVE", 75, minimum=0)  # longer than Envoy's idle timeout upstream
# Whether to believe a proxy's X-Forwarded-Proto is the services' setting (DJANGO_TRUST_X_FORWARDED_PROTO,
# svc_common/settings_base.py), not gunicorn's: by default it believes any client on loopback.
forwarded_allow_ips = ""
# Gunicorn 27's control socket lives under $HOME, which a read-only root filesystem refuses, and
# instances on one machine would share it; nothing here uses it.
control_socket_disable = True
accesslog = None  # Django writes each request's one line (svc_common.observability.access_log)
loglevel = os.environ.get("LOG_LEVEL", "info").lower()
# Gunicorn's lines as JSON on stdout, through the services' own logging configuration.
logconfig_dict = gunicorn_logconfig_dict(loglevel)
# Gunicorn's Logger naming the service, its access log off (logconfig_dict would turn it on).
logger_class = "svc_common.server.gunicorn_logging.ServiceLogger"

_backend = os.environ.get("REPOSITORY_BACKEND", "memory").strip().lower()
if workers > 1 and _backend == "memory":
    sys.stderr.write(
        f"refusing to start: GUNICORN_WORKERS={workers} with REPOSITORY_BACKEND=memory. The in-memory "
        "store lives in one process, so several workers would hand out duplicate ids and miss each "
        "other's data. Use GUNICORN_WORKERS=1 or REPOSITORY_BACKEND=postgres.\n"
    )
    sys.exit(2)

if workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    # prometheus_client must see this before any worker imports it, so set it in the master.
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="prometheus-multiproc-")


def on_starting(server: Any) -> None:
    """Start each run with an empty metrics directory: stale files from a dead run would add up."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        shutil.rmtree(directory, ignore_errors=True)
        os.makedirs(directory, exist_ok=True)


def post_worker_init(worker: Any) -> None:
    """Say when a worker has loaded the app and is about to accept: gunicorn's "Booting worker" line
    comes before the load, which takes about a second, and until then the other workers take every
    connection (a readiness probe answered by one worker says nothing about the rest)."""
    worker.log.info("Worker ready (pid: %s)", worker.pid)


def worker_exit(server: Any, worker: Any) -> None:
    """Export the spans still queued, then write the log lines still queued, before the worker goes."""
    import logging

    from svc_common.observability.tracing import shutdown_tracing

    shutdown_tracing()
    for handler in logging.getLogger().handlers:
        handler.close()


def child_exit(server: Any, worker: Any) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]
