from typing import Any

from drf_spectacular.utils import extend_schema, extend_schema_view

from svc_common.api.schema import IDEMPOTENCY_PARAMETERS, error_responses
from svc_common.api.viewsets import RepositoryListMixin, RepositoryRetrieveMixin, ServiceCreateMixin, ServiceViewSet
from svc_common.storage.idempotency import Created
from users.entities import User
from users.serializers import UserSerializer
from users.services import create_user


@extend_schema_view(
    list=extend_schema(responses={200: UserSerializer(many=True), **error_responses(404)}),
    retrieve=extend_schema(responses={200: UserSerializer, **error_responses(404)}),
    create=extend_schema(
        parameters=IDEMPOTENCY_PARAMETERS,
        responses={201: UserSerializer, **error_responses(400, 409, 413, 415, 422)},
    ),
)
class UserViewSet(
    ServiceCreateMixin,
    RepositoryListMixin,
    RepositoryRetrieveMixin,
    ServiceViewSet,
):
    """Users: create one, read one by id, or page through all of them."""

    serializer_class = UserSerializer  # one shape in and out: the id is read-only
    lookup_value_regex = r"[0-9]+"
    not_found_detail = "User {id} not found"

    def create_entity(self, validated_data: dict[str, Any], *, idempotency_key: str | None) -> Created[User]:
        return create_user(**validated_data, repository=self.get_repository(), idempotency_key=idempotency_key)
