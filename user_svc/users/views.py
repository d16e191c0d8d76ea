from rest_framework import status, viewsets
from rest_framework.response import Response

from svc_common.errors import Conflict
from svc_common.viewsets import RepositoryListMixin, RepositoryRetrieveMixin
from users.repositories import get_user_repository
from users.serializers import UserSerializer
from users.services import EmailAlreadyRegistered, create_user


class UserViewSet(RepositoryListMixin, RepositoryRetrieveMixin, viewsets.GenericViewSet):
    """Users: create one, read one by id, or page through all of them."""

    serializer_class = UserSerializer
    lookup_value_regex = r"[0-9]+"
    not_found_detail = "User {id} not found"

    def get_repository(self):
        return get_user_repository()

    def create(self, request):
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        try:
            user = create_user(**serializer.validated_data, repository=self.get_repository())
        except EmailAlreadyRegistered as exc:
            raise Conflict(str(exc)) from None
        headers = {"Location": f"/users/{user.id}"}
        return Response(self.get_serializer(user).data, status=status.HTTP_201_CREATED, headers=headers)
