from orders.urls import urlpatterns as order_urlpatterns
from svc_common.api.health import platform_urlpatterns

urlpatterns = [*order_urlpatterns, *platform_urlpatterns()]

handler400 = "svc_common.api.exception_handler.bad_request"
handler404 = "svc_common.api.exception_handler.not_found"
handler500 = "svc_common.api.exception_handler.server_error"
