from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework import viewsets

from svc_common.errors import Conflict
from svc_common.schema import IDEMPOTENCY_PARAMETERS, error_responses
from svc_common.viewsets import RepositoryListMixin, RepositoryRetrieveMixin, ServiceCreateMixin
from users.serializers import UserSerializer
from users.services import EmailAlreadyRegistered, create_user


@extend_schema_view(
    list=extend_schema(responses={200: UserSerializer(many=True), **error_responses(404)}),
    retrieve=extend_schema(responses={200: UserSerializer, **error_responses(404)}),
    create=extend_schema(
        parameters=IDEMPOTENCY_PARAMETERS, responses={201: UserSerializer, **error_responses(400, 409, 413, 415, 422)}
    ),
)
class UserViewSet(ServiceCreateMixin, RepositoryListMixin, RepositoryRetrieveMixin, viewsets.GenericViewSet):
    """Users: create one, read one by id, or page through all of them."""

    serializer_class = UserSerializer
    lookup_value_regex = r"[0-9]+"
    not_found_detail = "User {id} not found"

    def perform_create(self, validated_data, idempotency_key):
        try:
            return create_user(**validated_data, repository=self.get_repository(), idempotency_key=idempotency_key)
        except EmailAlreadyRegistered as exc:
            raise Conflict(str(exc)) from None
