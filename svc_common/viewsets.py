"""Small ViewSet mixins that read through a repository instead of a QuerySet."""

import structlog
from django.urls import reverse
from rest_framework import status
from rest_framework.exceptions import NotFound
from rest_framework.response import Response

from svc_common.errors import UnprocessableContent
from svc_common.idempotency import REPLAYED_HEADER, IdempotencyKeyReused, idempotency_key_from
from svc_common.pagination import RepositoryQuery
from svc_common.repository import Repository, get_repository


class RepositoryMixin:
    """Where a viewset's entities live: by default the process's repository (``REPOSITORY_CLASS``).
    Override ``get_repository`` to serve a viewset from another store."""

    def get_repository(self) -> Repository:
        return get_repository()


class ServiceCreateMixin(RepositoryMixin):
    """POST /<prefix>: read the optional ``Idempotency-Key`` header (400 when malformed), validate,
    hand both to ``perform_create`` (which calls a service function and returns its ``Created``),
    answer 201 with the entity and its Location, plus ``Idempotent-Replayed: true`` when an earlier
    request with that key stored it; a key reused with different data is a 422."""

    def perform_create(self, validated_data, idempotency_key):
        raise NotImplementedError

    def create(self, request):
        idempotency_key = idempotency_key_from(request.headers)
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        try:
            entity, replayed = self.perform_create(serializer.validated_data, idempotency_key)
        except IdempotencyKeyReused as exc:
            raise UnprocessableContent(str(exc)) from None
        headers = {"Location": reverse(f"{self.basename}-detail", kwargs={"pk": entity.id})}
        if replayed:
            headers[REPLAYED_HEADER] = "true"
        return Response(self.get_serializer(entity).data, status=status.HTTP_201_CREATED, headers=headers)


class RepositoryRetrieveMixin(RepositoryMixin):
    """GET /<prefix>/<id>: 200 with the entity, or 404 with a JSON detail. The request's log lines
    carry the id as ``<basename>_id`` (user_id, order_id)."""

    not_found_detail = "Not found."

    def retrieve(self, request, pk=None):
        entity_id = int(pk)
        structlog.contextvars.bind_contextvars(**{f"{self.basename}_id": entity_id})
        entity = self.get_repository().get(entity_id)
        if entity is None:
            raise NotFound(self.not_found_detail.format(id=pk))
        return Response(self.get_serializer(entity).data)


class RepositoryListMixin(RepositoryMixin):
    """GET /<prefix>: a page of entities, filtered by what ``get_list_filters`` returns."""

    filter_backends = ()

    def get_list_filters(self) -> dict:
        return {}

    def get_queryset(self):
        return RepositoryQuery(self.get_repository(), **self.get_list_filters())

    def list(self, request):
        page = self.paginate_queryset(self.get_queryset())
        return self.get_paginated_response(self.get_serializer(page, many=True).data)
