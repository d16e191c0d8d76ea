"""Small ViewSet mixins that read through a repository instead of a QuerySet.

Each does one thing and declares the hooks it calls, with a working default where one exists:
``get_repository`` (the process's repository), ``get_input_serializer_class`` (the output serializer
unless ``input_serializer_class`` names another), ``get_list_filters`` (none). ``create_entity`` has no
default: it is where a viewset calls its service function.
"""

from typing import TYPE_CHECKING, Any

import structlog
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest, HttpResponseBase
from django.urls import reverse
from rest_framework import status
from rest_framework.exceptions import NotFound
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.serializers import BaseSerializer
from rest_framework.viewsets import GenericViewSet

from svc_common.api.pagination import RepositoryQuery
from svc_common.storage.idempotency import REPLAYED_HEADER, Created, idempotency_key_from
from svc_common.storage.repository import MAX_ENTITY_ID, Repository, get_repository

# The mixins are composed into GenericViewSets; type-checking them as one lets mypy check their calls.
if TYPE_CHECKING:
    from rest_framework.viewsets import GenericViewSet

    _ViewSet = GenericViewSet[Any]
else:
    _ViewSet = object


class DeferredAuthenticationMixin(_ViewSet):
    """DRF authenticates every request before the handler runs. A viewset without authentication
    classes (these services leave identity to the mesh: istio/) always gets the anonymous user, so
    that is left until something reads ``request.user``: DRF's documented lazy mode. A viewset with
    authentication classes is authenticated up front, as DRF does."""

    def perform_authentication(self, request: Request) -> None:
        if self.authentication_classes:
            super().perform_authentication(request)


class AcyclicRequestMixin(_ViewSet):
    """Leaves no reference cycle behind a request, so its objects are freed when it is answered.

    DRF ties each request's objects into cycles: the view and its Request point at each other
    (``parser_context``), and the Response's ``renderer_context`` holds the view, the request and the
    Response itself. Only the garbage collector frees a cycle: every request's objects (44 on a GET,
    55 on a POST, and through the Django request the whole WSGI environ) waited for the next
    collection, and those still in flight when one ran were promoted to older generations. Under
    load, the order service's full collections each found thousands of them and stopped its event
    loop for 50-70 ms, which was the p99 of POST /orders; on a GET, the collections cost 26k
    instructions (callgrind, 2.9 %).

    Nothing reads those links once the response is rendered, so ``dispatch`` renders it (Django's
    own ``render()`` call after the view is then a no-op) and cuts them. A ``process_template_response``
    middleware would see the rendered response: none is installed. A view that raises past DRF's
    exception handler (a 500) keeps its cycles, for the collector.

    Reproduces what DRF's ``APIView.dispatch`` answers (status, headers, body), public names only;
    testsupport/platform_checks.py compares the two on the same requests."""

    def dispatch(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        response = super().dispatch(request, *args, **kwargs)
        if isinstance(response, Response):
            response.render()
            response.renderer_context = None  # type: ignore[attr-defined]  # set by finalize_response
        drf_request = self.__dict__.get("request")
        if isinstance(drf_request, Request):
            drf_request.parser_context = None  # type: ignore[assignment]
        self.__dict__.clear()  # the view itself: its request, response, headers and arguments
        return response


class RepositoryMixin(_ViewSet):
    """Where a viewset's entities live: by default the process's repository (``REPOSITORY_CLASS``).
    Override ``get_repository`` to serve a viewset from another store."""

    def get_repository(self) -> Repository[Any]:
        return get_repository()


class InputSerializerMixin(_ViewSet):
    """Requests and responses may have different shapes (HackSoft's input/output serializers):
    ``serializer_class`` describes what the API answers, ``input_serializer_class`` what a write
    accepts. The browsable API's form and the OpenAPI request body follow the input serializer."""

    input_serializer_class: type[BaseSerializer[Any]] | None = None

    def get_output_serializer_class(self) -> type[BaseSerializer[Any]]:
        if self.serializer_class is None:
            raise ImproperlyConfigured(f"{type(self).__name__} must set serializer_class")
        return self.serializer_class

    def get_input_serializer_class(self) -> type[BaseSerializer[Any]]:
        return self.input_serializer_class or self.get_output_serializer_class()

    def get_serializer_class(self) -> type[BaseSerializer[Any]]:
        request = getattr(self, "request", None)
        if request is not None and request.method not in ("GET", "HEAD", "OPTIONS"):
            return self.get_input_serializer_class()
        return self.get_output_serializer_class()


class ServiceCreateMixin(InputSerializerMixin, RepositoryMixin):
    """POST /<prefix>: read the optional ``Idempotency-Key`` header (400 when malformed), validate the
    body with the input serializer, hand both to ``create_entity``, and answer 201 with the entity
    (output serializer) and its Location, plus ``Idempotent-Replayed: true`` when an earlier request
    with that key stored it. Domain errors raised by ``create_entity`` are answered by the exception
    handler (svc_common.api.exception_handler)."""

    def create_entity(self, validated_data: dict[str, Any], *, idempotency_key: str | None) -> Created[Any]:
        """Call the service function that stores the entity and return its ``Created``."""
        raise NotImplementedError(f"{type(self).__name__} must define create_entity() to accept POST")

    def create(self, request: Request) -> Response:
        idempotency_key = idempotency_key_from(request.headers)
        serializer = self.get_input_serializer_class()(data=request.data, context=self.get_serializer_context())
        serializer.is_valid(raise_exception=True)
        entity, replayed = self.create_entity(serializer.validated_data, idempotency_key=idempotency_key)
        headers = {"Location": reverse(f"{self.basename}-detail", kwargs={"pk": entity.id})}
        if replayed:
            headers[REPLAYED_HEADER] = "true"
        output = self.get_output_serializer_class()(entity, context=self.get_serializer_context())
        return Response(output.data, status=status.HTTP_201_CREATED, headers=headers)


class RepositoryRetrieveMixin(RepositoryMixin):
    """GET /<prefix>/<id>: 200 with the entity, or 404 with a JSON detail. The request's log lines
    carry the id as ``<basename>_id`` (user_id, order_id)."""

    not_found_detail = "Not found."

    def retrieve(self, request: Request, pk: str | None = None) -> Response:
        entity = None
        # The route admits digits only. Past 19 of them an id cannot exist, and int() refuses
        # strings over 4300 digits: such an id is simply not found.
        if pk is not None and len(pk) <= len(str(MAX_ENTITY_ID)) and int(pk) <= MAX_ENTITY_ID:
            entity_id = int(pk)
            structlog.contextvars.bind_contextvars(**{f"{self.basename}_id": entity_id})
            entity = self.get_repository().get(entity_id)
        if entity is None:
            raise NotFound(self.not_found_detail.format(id=pk))
        return Response(self.get_serializer(entity).data)


class RepositoryListMixin(RepositoryMixin):
    """GET /<prefix>: a page of entities, filtered by what ``get_list_filters`` returns."""

    filter_backends = ()

    def get_list_filters(self) -> dict[str, Any]:
        return {}

    # DRF's pagination takes any sliceable with count(), not only a QuerySet.
    def get_queryset(self) -> RepositoryQuery:  # type: ignore[override]
        return RepositoryQuery(self.get_repository(), **self.get_list_filters())

    def list(self, request: Request) -> Response:
        page = self.paginate_queryset(self.get_queryset())  # type: ignore[arg-type]
        # What DRF's ListSerializer writes, through one serializer: a ListSerializer and its child
        # point at each other, a reference cycle per request (see AcyclicRequestMixin).
        serializer = self.get_serializer()
        return self.get_paginated_response([serializer.to_representation(entity) for entity in page or ()])


class ServiceViewSet(DeferredAuthenticationMixin, AcyclicRequestMixin, GenericViewSet[Any]):
    """The base of the services' viewsets: DRF's GenericViewSet with the request lifecycle above.
    A viewset adds the mixins of the actions it serves (create, list, retrieve)."""
