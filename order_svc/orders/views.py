from typing import Any

import structlog
from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework.request import Request
from rest_framework.response import Response

from orders.entities import Order
from orders.serializers import OrderInputSerializer, OrderListQuerySerializer, OrderOutputSerializer
from orders.services import create_order
from orders.user_client import get_user_client
from svc_common.api.schema import IDEMPOTENCY_PARAMETERS, error_responses
from svc_common.api.viewsets import RepositoryListMixin, RepositoryRetrieveMixin, ServiceCreateMixin, ServiceViewSet
from svc_common.storage.idempotency import Created


@extend_schema_view(
    retrieve=extend_schema(responses={200: OrderOutputSerializer, **error_responses(404)}),
    create=extend_schema(
        parameters=IDEMPOTENCY_PARAMETERS,
        request=OrderInputSerializer,
        responses={201: OrderOutputSerializer, **error_responses(400, 404, 413, 415, 422)},
    ),
)
class OrderViewSet(
    ServiceCreateMixin,
    RepositoryListMixin,
    RepositoryRetrieveMixin,
    ServiceViewSet,
):
    """Orders: place one for an existing user, read one by id, or page through them by user."""

    serializer_class = OrderOutputSerializer
    input_serializer_class = OrderInputSerializer
    lookup_value_regex = r"[0-9]+"
    not_found_detail = "Order {id} not found"

    def get_list_filters(self) -> dict[str, Any]:
        query = OrderListQuerySerializer(data=self.request.query_params)
        query.is_valid(raise_exception=True)
        filters = {key: value for key, value in query.validated_data.items() if value is not None}
        if "user_id" in filters:
            structlog.contextvars.bind_contextvars(user_id=filters["user_id"])
        return filters

    @extend_schema(
        parameters=[OrderListQuerySerializer],
        responses={200: OrderOutputSerializer(many=True), **error_responses(400, 404)},
    )
    def list(self, request: Request) -> Response:
        return super().list(request)

    def create_entity(self, validated_data: dict[str, Any], *, idempotency_key: str | None) -> Created[Order]:
        return create_order(
            **validated_data,
            repository=self.get_repository(),
            user_client=get_user_client(),
            idempotency_key=idempotency_key,
        )
