from svc_common.api.health import platform_urlpatterns
from users.urls import urlpatterns as user_urlpatterns

urlpatterns = [*user_urlpatterns, *platform_urlpatterns()]

handler400 = "svc_common.api.exception_handler.bad_request"
handler404 = "svc_common.api.exception_handler.not_found"
handler500 = "svc_common.api.exception_handler.server_error"
