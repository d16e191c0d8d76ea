"""DRF's page-number pagination over a repository instead of a QuerySet."""

from typing import Any

from rest_framework.pagination import PageNumberPagination

from svc_common.storage.repository import Repository


class RepositoryQuery:
    """Just enough of the QuerySet protocol (count and slicing) for Django's Paginator."""

    ordered = True

    def __init__(self, repository: Repository[Any], **filters: Any) -> None:
        self.repository = repository
        self.filters = filters

    def count(self) -> int:
        return self.repository.count(**self.filters)

    def __len__(self) -> int:
        return self.count()

    def __getitem__(self, item: slice) -> list[Any]:
        if not isinstance(item, slice):
            raise TypeError("RepositoryQuery only supports slicing")
        start = item.start or 0
        return self.repository.page(start, item.stop - start, **self.filters)


class RepositoryPagination(PageNumberPagination):
    page_size_query_param = "page_size"
    max_page_size = 100
