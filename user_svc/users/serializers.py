from rest_framework import serializers

from svc_common.api.fields import StrictCharField
from svc_common.api.serializers import FieldsOnceSerializer
from users.entities import User


class UserSerializer(FieldsOnceSerializer[User]):
    id = serializers.IntegerField(read_only=True)
    name = StrictCharField(min_length=1, max_length=200, trim_whitespace=True)
    email = serializers.EmailField(max_length=254)
