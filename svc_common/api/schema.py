"""The error answers of the API, documented in its OpenAPI schema."""

from typing import Any

from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, inline_serializer
from rest_framework import serializers

from svc_common.storage.idempotency import HEADER, KEY_PATTERN, MAX_KEY_LENGTH, REPLAYED_HEADER

ERROR = inline_serializer(
    "Error",
    fields={"detail": serializers.CharField(help_text="What went wrong.")},
)
# 400s from validation name the offending fields instead: {"email": ["Enter a valid email address."]}
VALIDATION_ERROR = OpenApiResponse(
    response={"type": "object", "additionalProperties": True},
    description="Invalid input: malformed JSON, a body that is not an object, or fields that fail "
    "validation (then keyed by field name).",
)

DESCRIPTIONS = {
    404: "No such resource.",
    409: "Conflicts with an existing resource.",
    413: "Body over the 1 MiB limit.",
    414: "Request line over 4094 bytes.",
    415: "Body is not application/json.",
    422: "The Idempotency-Key was already used with a different request; nothing was stored.",
    431: "Headers too large.",
    503: "Storage or a service this one depends on is unavailable. A create that timed out on storage "
    "may still have been stored: retry it with the same Idempotency-Key.",
}

# The optional Idempotency-Key request header of the create routes, and the header a replay answers with.
IDEMPOTENCY_PARAMETERS = [
    OpenApiParameter(
        HEADER,
        type={"type": "string", "minLength": 1, "maxLength": MAX_KEY_LENGTH, "pattern": KEY_PATTERN},
        location=OpenApiParameter.HEADER,
        required=False,
        description="Makes a create safe to retry: a request repeating a key within 24 hours stores "
        "nothing and answers 201 with what the first request stored (and `Idempotent-Replayed: true`); "
        "the same key with different data is refused with 422. 1-255 printable ASCII characters, "
        "not starting or ending with a space; a UUID is a good choice.",
    ),
    OpenApiParameter(
        REPLAYED_HEADER,
        type={"type": "string", "enum": ["true"]},
        location=OpenApiParameter.HEADER,
        required=False,
        response=[201],
        description="Present on a replay: an earlier request with the same Idempotency-Key stored "
        "this entity, and nothing was stored now.",
    ),
]


def error_responses(*codes: int) -> dict[int, OpenApiResponse]:
    """OpenAPI responses for the given error codes, each with the JSON body the API answers."""
    return {
        code: VALIDATION_ERROR if code == 400 else OpenApiResponse(ERROR, description=DESCRIPTIONS[code])
        for code in codes
    }


def canonical_paths(endpoints: list[tuple[str, str, str, Any]]) -> list[tuple[str, str, str, Any]]:
    """drf-spectacular preprocessing hook: name each route by the path the API itself uses (``/users``,
    ``/users/{id}``: Location headers, pagination links, the README), not ``/users/``. The routes take
    the trailing slash or not (svc_common.api.routers.OptionalSlashRouter, ``/?``), which
    drf-spectacular writes as a slash; a client generated from the schema should call the canonical one."""
    return [
        (path.rstrip("/") if path != "/" else path, path_regex, method, callback)
        for path, path_regex, method, callback in endpoints
    ]


def add_protocol_errors(result: dict[str, Any], generator: Any, request: Any, public: bool) -> dict[str, Any]:
    """drf-spectacular postprocessing hook: what any route may answer before or around its view
    (gunicorn's refusals, and storage being down)."""
    for path in result.get("paths", {}).values():
        for operation in path.values():
            responses = operation.setdefault("responses", {})
            for code in (414, 431, 503):
                responses.setdefault(
                    str(code),
                    {
                        "description": DESCRIPTIONS[code],
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
                    },
                )
    return result
