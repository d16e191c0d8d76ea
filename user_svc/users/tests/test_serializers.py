import pytest

from users.serializers import UserSerializer


def plain_drf_serializer():
    """UserSerializer's fields on DRF's own Serializer, which builds them for every serializer."""
    from rest_framework import serializers

    return type("PlainUserSerializer", (serializers.Serializer,), dict(UserSerializer._declared_fields))


def errors_for(data):
    serializer = UserSerializer(data=data)
    assert not serializer.is_valid()
    return serializer.errors


def test_name_is_trimmed():
    serializer = UserSerializer(data={"name": "  Ada Lovelace \t", "email": "ada@example.com"})
    assert serializer.is_valid(), serializer.errors
    assert serializer.validated_data["name"] == "Ada Lovelace"


@pytest.mark.parametrize("name", ["", "   ", "x" * 201, None, 42, True, ["Ada"]])
def test_bad_names_are_rejected(name):
    assert "name" in errors_for({"name": name, "email": "a@example.com"})


def test_name_of_200_characters_after_trimming_is_accepted():
    serializer = UserSerializer(data={"name": " " + "x" * 200 + " ", "email": "a@example.com"})
    assert serializer.is_valid(), serializer.errors


@pytest.mark.parametrize("email", ["", "not-an-email", "a@", "@b.com", "a b@c.com", 42, ["a@b.com"]])
def test_bad_emails_are_rejected(email):
    assert "email" in errors_for({"name": "Ada", "email": email})


def test_email_longer_than_254_characters_is_rejected():
    too_long = f"{'a' * 64}@{'c' * 60}.{'d' * 60}.{'e' * 60}.{'f' * 60}.com"
    assert len(too_long) > 254
    assert "email" in errors_for({"name": "Ada", "email": too_long})


def test_missing_fields_are_named():
    assert set(errors_for({})) == {"name", "email"}


@pytest.mark.parametrize(
    "data",
    [
        {"name": "  Ada ", "email": "ada@example.com"},
        {"name": "Ada", "email": "ada@example.com", "id": 99, "extra": True},
        {"name": "", "email": "not an email"},
        {"name": 5, "email": None},
        {"name": "x" * 201},
        {},
        ["not", "an", "object"],
        "a string",
    ],
)
def test_validation_says_what_a_plain_drf_serializer_says(data):
    """FieldsOnceSerializer's validation against DRF's own (fields built for each serializer)."""
    ours, plain = UserSerializer(data=data), plain_drf_serializer()(data=data)
    assert ours.is_valid() == plain.is_valid()
    assert (ours.errors, dict(ours.validated_data) if not ours.errors else None) == (
        plain.errors,
        dict(plain.validated_data) if not plain.errors else None,
    )


def test_output_is_what_a_plain_drf_serializer_writes():
    from users.entities import User

    user = User(id=7, name="Ada \u2028 Lovelace", email="ada@example.com")
    assert (
        UserSerializer(user).data
        == plain_drf_serializer()(user).data
        == {
            "id": 7,
            "name": "Ada \u2028 Lovelace",
            "email": "ada@example.com",
        }
    )
