from svc_common.routers import OptionalSlashRouter
from users.views import UserViewSet

router = OptionalSlashRouter()
router.register("users", UserViewSet, basename="user")
urlpatterns = router.urls
