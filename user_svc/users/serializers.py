from rest_framework import serializers


class UserSerializer(serializers.Serializer):
    id = serializers.IntegerField(read_only=True)
    name = serializers.CharField(min_length=1, max_length=200, trim_whitespace=True)
    email = serializers.EmailField(max_length=254)
