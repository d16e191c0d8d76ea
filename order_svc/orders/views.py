import structlog
from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework import viewsets
from rest_framework.exceptions import NotFound

from orders.serializers import OrderListQuerySerializer, OrderSerializer
from orders.services import UserNotFound, create_order
from orders.user_client import UserServiceUnavailable, get_user_client
from svc_common.errors import DependencyUnavailable
from svc_common.schema import IDEMPOTENCY_PARAMETERS, error_responses
from svc_common.viewsets import RepositoryListMixin, RepositoryRetrieveMixin, ServiceCreateMixin


@extend_schema_view(
    retrieve=extend_schema(responses={200: OrderSerializer, **error_responses(404)}),
    create=extend_schema(
        parameters=IDEMPOTENCY_PARAMETERS, responses={201: OrderSerializer, **error_responses(400, 404, 413, 415, 422)}
    ),
)
class OrderViewSet(ServiceCreateMixin, RepositoryListMixin, RepositoryRetrieveMixin, viewsets.GenericViewSet):
    """Orders: place one for an existing user, read one by id, or page through them by user."""

    serializer_class = OrderSerializer
    lookup_value_regex = r"[0-9]+"
    not_found_detail = "Order {id} not found"

    def get_list_filters(self) -> dict:
        query = OrderListQuerySerializer(data=self.request.query_params)
        query.is_valid(raise_exception=True)
        filters = {key: value for key, value in query.validated_data.items() if value is not None}
        if "user_id" in filters:
            structlog.contextvars.bind_contextvars(user_id=filters["user_id"])
        return filters

    @extend_schema(
        parameters=[OrderListQuerySerializer], responses={200: OrderSerializer(many=True), **error_responses(400, 404)}
    )
    def list(self, request):
        return super().list(request)

    def perform_create(self, validated_data, idempotency_key):
        try:
            return create_order(
                **validated_data,
                repository=self.get_repository(),
                user_client=get_user_client(),
                idempotency_key=idempotency_key,
            )
        except UserNotFound as exc:
            raise NotFound(str(exc)) from None
        except UserServiceUnavailable:
            raise DependencyUnavailable("The user service is unavailable; the order was not stored.") from None
