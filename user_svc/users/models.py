"""Tables of the user service (``REPOSITORY_BACKEND=postgres``); ``users.postgres_repository`` maps them to
``users.entities.User``, which is what the rest of the service sees."""

from django.db import models

from svc_common.storage.postgres_repository import IdempotencyKeyRow


class UserRow(models.Model):
    id = models.BigAutoField(primary_key=True)
    name = models.CharField(max_length=200)
    email = models.CharField(max_length=254)
    # users.repositories.email_key(email), the one rule every backend applies. Python's casefold
    # rather than SQL's lower(): they differ beyond ASCII, and the backends must agree.
    email_key = models.CharField(max_length=1024)

    class Meta:
        db_table = "users"
        constraints = [models.UniqueConstraint(fields=["email_key"], name="users_email_key_unique")]

    def __str__(self) -> str:
        return f"user {self.id}"


class UserIdempotencyKey(IdempotencyKeyRow):
    entity = models.ForeignKey(UserRow, on_delete=models.CASCADE, related_name="+")

    class Meta(IdempotencyKeyRow.Meta):
        db_table = "users_idempotency_keys"
