from django.apps import AppConfig


class UsersConfig(AppConfig):
    name = "users"

    def ready(self):
        from svc_common.metrics import publish_build_info

        publish_build_info()
