"""The order service's Django project.

``SERVICE_NAME`` lives here rather than in the settings so that gunicorn's master can name its log
lines without loading the settings, which import the database driver: that must wait until gevent
has patched the worker (svc_common.server.gunicorn_worker), or the driver keeps its blocking wait.
"""

SERVICE_NAME = "order-svc"
