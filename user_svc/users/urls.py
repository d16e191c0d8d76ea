from svc_common.api.routers import OptionalSlashRouter
from users.views import UserViewSet

router = OptionalSlashRouter()
router.register("users", UserViewSet, basename="user")
urlpatterns = router.urls
