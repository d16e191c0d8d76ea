"""Small ViewSet mixins that read through a repository instead of a QuerySet."""

import structlog
from rest_framework.exceptions import NotFound
from rest_framework.response import Response

from svc_common.pagination import RepositoryQuery


class RepositoryRetrieveMixin:
    """GET /<prefix>/<id>: 200 with the entity, or 404 with a JSON detail. The request's log lines
    carry the id as ``<basename>_id`` (user_id, order_id)."""

    not_found_detail = "Not found."

    def retrieve(self, request, pk=None):
        structlog.contextvars.bind_contextvars(**{f"{self.basename}_id": int(pk)})
        entity = self.get_repository().get(int(pk))
        if entity is None:
            raise NotFound(self.not_found_detail.format(id=pk))
        return Response(self.get_serializer(entity).data)


class RepositoryListMixin:
    """GET /<prefix>: a page of entities, filtered by what ``get_list_filters`` returns."""

    filter_backends = ()

    def get_list_filters(self) -> dict:
        return {}

    def get_queryset(self):
        return RepositoryQuery(self.get_repository(), **self.get_list_filters())

    def list(self, request):
        page = self.paginate_queryset(self.get_queryset())
        return self.get_paginated_response(self.get_serializer(page, many=True).data)
