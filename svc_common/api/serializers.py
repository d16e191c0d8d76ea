"""Serializers that build their fields once per class, not once per request."""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from django.core.exceptions import ValidationError as DjangoValidationError
from rest_framework import serializers
from rest_framework.exceptions import ValidationError
from rest_framework.fields import Field, SkipField, empty, get_error_detail
from rest_framework.relations import PKOnlyObject
from rest_framework.settings import api_settings

T = TypeVar("T")
AnyField = Field[Any, Any, Any, Any]


@dataclass(frozen=True)
class SharedFields:
    output: list[AnyField]  # what to_representation writes: the fields that are not write-only
    input: list[AnyField]  # what to_internal_value validates: the fields that are not read-only
    defaulted_read_only: list[AnyField]  # read-only fields whose defaults the validators see


class FieldsOnceSerializer(serializers.Serializer[T]):
    """A Serializer whose output (``to_representation``) and validation (``to_internal_value`` and
    ``run_validators``) go through one set of fields per class.

    DRF deep-copies a serializer's declared fields for every serializer it builds, that is for every
    request and response, and for every element of a list: profiled, about a tenth of a GET
    /users/<id> and of a POST /orders went to building fields that say the same each time. Writing
    an entity out only reads its fields, and validating input only runs them (a field keeps no state
    of a validation), so both go through a set built and bound once per class, on first use.
    Partial validation (``partial=True``, which fields read from their root), the browsable API's
    forms and the OpenAPI schema use the instance's own fields, as in DRF.

    For serializers whose fields do not read the serializer's context (no hyperlinked or
    request-dependent fields, no defaults or validators that need the request): the shared fields
    are bound to a serializer without one.

    Reproduces DRF's ``Serializer.to_representation``, ``to_internal_value`` and ``run_validators``;
    the services' test_serializers.py compare output, validated data and errors with DRF's own
    serializer on valid and invalid payloads.
    """

    _shared: ClassVar[dict[type, "SharedFields"]] = {}

    @classmethod
    def shared_fields(cls) -> "SharedFields":
        """The class's fields, built and bound once (to a serializer of the class without context)."""
        shared = FieldsOnceSerializer._shared.get(cls)
        if shared is None:
            fields = list(cls().fields.values())  # each field keeps its parent, and so the set, alive
            shared = SharedFields(
                output=[field for field in fields if not field.write_only],
                input=[field for field in fields if not field.read_only],
                defaulted_read_only=[
                    field for field in fields if field.read_only and _default_reaches_validators(field)
                ],
            )
            shared = FieldsOnceSerializer._shared.setdefault(cls, shared)
        return shared

    def to_representation(self, instance: T) -> dict[str, Any]:
        # DRF's Serializer.to_representation, over the class's fields.
        representation: dict[str, Any] = {}
        for field in self.shared_fields().output:
            try:
                attribute = field.get_attribute(instance)
            except SkipField:
                continue
            check_for_none = attribute.pk if isinstance(attribute, PKOnlyObject) else attribute
            name = str(field.field_name)  # bound fields all have one
            representation[name] = None if check_for_none is None else field.to_representation(attribute)
        return representation

    def to_internal_value(self, data: Any) -> dict[str, Any]:
        # DRF's Serializer.to_internal_value, over the class's fields.
        if self.partial:
            return super().to_internal_value(data)  # type: ignore[no-any-return]
        if not isinstance(data, Mapping):
            message = self.error_messages["invalid"].format(datatype=type(data).__name__)
            raise ValidationError({api_settings.NON_FIELD_ERRORS_KEY: [message]}, code="invalid")
        validated: dict[str, Any] = {}
        errors: dict[str, Any] = {}
        for field in self.shared_fields().input:
            name = str(field.field_name)  # bound fields all have one
            validate_method = getattr(self, "validate_" + name, None)
            try:
                value = field.run_validation(field.get_value(data))
                if validate_method is not None:
                    value = validate_method(value)
            except ValidationError as exc:
                errors[name] = exc.detail
            except DjangoValidationError as exc:
                errors[name] = get_error_detail(exc)
            except SkipField:
                pass
            else:
                self.set_value(validated, field.source_attrs, value)
        if errors:
            raise ValidationError(errors)
        return validated

    def run_validators(self, value: Any) -> None:
        # DRF's Serializer.run_validators: the read-only fields' defaults, from the class's fields.
        if self.partial or not isinstance(value, dict):
            return super().run_validators(value)
        defaults: dict[str, Any] = {}
        for field in self.shared_fields().defaulted_read_only:
            try:
                defaults[str(field.source)] = field.get_default()
            except SkipField:
                continue
        Field.run_validators(self, {**defaults, **value})


def _default_reaches_validators(field: AnyField) -> bool:
    """DRF's rule (Serializer._read_only_defaults) for a read-only field's default in validation."""
    return field.default is not empty and field.source != "*" and "." not in str(field.source)
