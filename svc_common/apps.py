from django.apps import AppConfig


class ServiceAppConfig(AppConfig):
    """Base for each service's app: publishes build info and sets up tracing once Django is ready."""

    def ready(self) -> None:
        from svc_common.observability import access_log
        from svc_common.observability.metrics_endpoint import publish_build_info
        from svc_common.observability.tracing import configure_tracing

        access_log.connect()
        publish_build_info()
        configure_tracing()  # before Django builds the middleware chain (svc_common.observability.tracing)
        skip_database_housekeeping_without_a_database()


def skip_database_housekeeping_without_a_database() -> None:
    """On the in-memory backend Django has no database (only its dummy backend), yet at each request's
    start and end it still resets the query log and looks for connections to close: about 5 % of a
    GET, profiled. With a database (REPOSITORY_BACKEND=postgres) both stay: closing the connection at
    the end of the request is what hands it back to the pool."""
    from django.core.signals import request_finished, request_started
    from django.db import close_old_connections, connections, reset_queries

    if all(connections.settings[alias]["ENGINE"] == "django.db.backends.dummy" for alias in connections):
        request_started.disconnect(reset_queries)
        request_started.disconnect(close_old_connections)
        request_finished.disconnect(close_old_connections)
