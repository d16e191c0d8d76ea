"""Output serializers that build their fields once per class, not once per response."""

from typing import Any, ClassVar, TypeVar

from rest_framework import serializers
from rest_framework.fields import Field, SkipField
from rest_framework.relations import PKOnlyObject

T = TypeVar("T")


class FieldsOnceSerializer(serializers.Serializer[T]):
    """A Serializer whose output (``to_representation``) goes through one set of fields per class.

    DRF deep-copies a serializer's declared fields for every serializer it builds, that is for every
    response, and for every element of a list: profiled, about a tenth of a GET /users/<id> went to
    building fields that say the same each time. Writing an entity out only reads its fields, so
    output goes through a set built and bound once per class, on first use. Validation, the browsable
    API's forms and the OpenAPI schema still use the instance's own fields, as in DRF.

    For serializers whose fields do not read the serializer's context (no hyperlinked or
    request-dependent fields): the shared fields are bound to a serializer without one.
    """

    _output_fields: ClassVar[dict[type, list[Field[Any, Any, Any, Any]]]] = {}

    @classmethod
    def output_fields(cls) -> list[Field[Any, Any, Any, Any]]:
        fields = FieldsOnceSerializer._output_fields.get(cls)
        if fields is None:
            fields = FieldsOnceSerializer._output_fields.setdefault(cls, list(cls()._readable_fields))
        return fields

    def to_representation(self, instance: T) -> dict[str, Any]:
        # DRF's Serializer.to_representation, over the class's fields.
        representation: dict[str, Any] = {}
        for field in self.output_fields():
            try:
                attribute = field.get_attribute(instance)
            except SkipField:
                continue
            check_for_none = attribute.pk if isinstance(attribute, PKOnlyObject) else attribute
            name = str(field.field_name)  # bound fields all have one
            representation[name] = None if check_for_none is None else field.to_representation(attribute)
        return representation
