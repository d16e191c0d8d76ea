from django.apps import AppConfig


class ServiceAppConfig(AppConfig):
    """Base for each service's app: publishes build info and sets up tracing once Django is ready."""

    def ready(self) -> None:
        from svc_common import request_log
        from svc_common.metrics import publish_build_info
        from svc_common.tracing import configure_tracing

        request_log.connect()
        publish_build_info()
        configure_tracing()  # before Django builds the middleware chain (svc_common.tracing)
