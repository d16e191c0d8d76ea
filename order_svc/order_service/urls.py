from orders.urls import urlpatterns as order_urlpatterns
from svc_common.health import platform_urlpatterns

urlpatterns = [*order_urlpatterns, *platform_urlpatterns()]

handler400 = "svc_common.errors.bad_request"
handler404 = "svc_common.errors.not_found"
handler500 = "svc_common.errors.server_error"
