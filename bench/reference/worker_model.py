"""Gunicorn settings that run a reference app under the services' own worker model: the worker
class, worker count, connections per worker and keep-alive of svc_common.server.gunicorn_conf, read from there so the
comparison follows any change to it, without the services' logging and hooks."""

import os

from svc_common.server import gunicorn_conf as _shipped

bind = os.environ["BIND"]
worker_class = _shipped.worker_class
workers = _shipped.workers
worker_connections = _shipped.worker_connections
keepalive = _shipped.keepalive
timeout = _shipped.timeout
control_socket_disable = True
