from orders.views import OrderViewSet
from svc_common.api.routers import OptionalSlashRouter

router = OptionalSlashRouter()
router.register("orders", OrderViewSet, basename="order")
urlpatterns = router.urls
