import os

from django.core.wsgi import get_wsgi_application

from svc_common.api.request_guards import ChunkedRequestBody

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "user_service.settings")
# Django reads no body without Content-Length: a chunked one is read first (svc_common.api.request_guards).
application = ChunkedRequestBody(get_wsgi_application())
