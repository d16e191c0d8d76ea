"""The JSON renderer both services answer with."""

import math
from collections.abc import Mapping
from typing import Any

import orjson
from rest_framework import renderers

# What DRF's JSONRenderer escapes after encoding, so that its output is also valid JavaScript.
_LINE_SEPARATOR, _PARAGRAPH_SEPARATOR = "\u2028".encode(), "\u2029".encode()
# Types orjson would write in a format of its own: they go to DRF's encoder instead (``default``).
_OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS


class JSONRenderer(renderers.JSONRenderer):
    """DRF's JSONRenderer, encoding with orjson: the same bytes for what an API answers, at a fraction
    of the standard library's cost (``json.dumps`` with DRF's encoder class was about 4 % of a GET's
    instructions, counted).

    orjson writes compact UTF-8, which is DRF's default output (``COMPACT_JSON``, ``UNICODE_JSON``),
    and encodes str, int, dict and list subclasses (ErrorDetail, ReturnDict) as their base type, as json
    does. What it would write in a format of its own, or not at all (decimals, lazy translations, dates
    and times), goes to DRF's encoder through ``default``. What orjson refuses outright (integers past
    64 bits, non-string keys, float subclasses) is rendered by DRF's JSONRenderer, as is indented output
    (the browsable API's, or ``Accept: application/json; indent=4``) and output under other JSON
    settings. Three differences are left, for values no serializer here produces (money is a string,
    COERCE_DECIMAL_TO_STRING): a float is spelled orjson's way (1e16 where json writes 1e+16, the same
    number), a float NaN or infinity is written as null where DRF refuses it (``STRICT_JSON``), and a
    plain Enum member as its value where DRF's encoder refuses it. Public names only;
    testsupport/platform_checks.py renders generated documents (floats, decimals, dates and times,
    unicode, DRF's own types) with both and compares the bytes."""

    def __init__(self) -> None:
        self.drf_default = self.encoder_class().default

    def render(
        self, data: Any, accepted_media_type: str | None = None, renderer_context: Mapping[str, Any] | None = None
    ) -> bytes:
        if data is None:
            return b""
        # DRF's get_indent reads an indent= parameter of the accepted media type, else the context's.
        indented = (accepted_media_type is not None and ";" in accepted_media_type) or (
            renderer_context is not None and renderer_context.get("indent") is not None
        )
        if indented or self.ensure_ascii or not self.compact:
            return self.render_with_json(data, accepted_media_type, renderer_context)
        try:
            encoded = orjson.dumps(data, default=self.default, option=_OPTIONS)
        except orjson.JSONEncodeError:
            return self.render_with_json(data, accepted_media_type, renderer_context)
        if _LINE_SEPARATOR in encoded or _PARAGRAPH_SEPARATOR in encoded:
            encoded = encoded.replace(_LINE_SEPARATOR, b"\\u2028").replace(_PARAGRAPH_SEPARATOR, b"\\u2029")
        return encoded

    def render_with_json(
        self, data: Any, accepted_media_type: str | None, renderer_context: Mapping[str, Any] | None
    ) -> bytes:
        """DRF's own rendering, with the standard library's json."""
        rendered: bytes = super().render(data, accepted_media_type, renderer_context)
        return rendered

    def default(self, value: Any) -> Any:
        """What orjson cannot encode, as DRF's encoder has it. A float from there (a Decimal) is
        spelled as json spells it, which is not always orjson's way (9.999e-05, not 0.00009999)."""
        encoded = self.drf_default(value)
        if type(encoded) is float:
            if not math.isfinite(encoded):
                raise ValueError("Out of range float values are not JSON compliant")  # json's words
            return orjson.Fragment(float.__repr__(encoded))
        return encoded
