from django.apps import AppConfig


class OrdersConfig(AppConfig):
    name = "orders"

    def ready(self):
        from svc_common.metrics import publish_build_info

        publish_build_info()
