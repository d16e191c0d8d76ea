from rest_framework.routers import SimpleRouter


class OptionalSlashRouter(SimpleRouter):
    """Serves /users/7 and /users/7/ alike, so no request (least of all a POST) is ever redirected."""

    def __init__(self) -> None:
        super().__init__()
        self.trailing_slash = "/?"
