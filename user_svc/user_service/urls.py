from svc_common.health import platform_urlpatterns
from users.urls import urlpatterns as user_urlpatterns

urlpatterns = [*user_urlpatterns, *platform_urlpatterns()]

handler400 = "svc_common.errors.bad_request"
handler404 = "svc_common.errors.not_found"
handler500 = "svc_common.errors.server_error"
