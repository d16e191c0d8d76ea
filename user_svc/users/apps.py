from svc_common.apps import ServiceAppConfig


class UsersConfig(ServiceAppConfig):
    default = True  # the imported base class is an AppConfig too; this one is the app's
    name = "users"
