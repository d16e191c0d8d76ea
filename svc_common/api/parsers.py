"""The one request-body parser both services use."""

from collections.abc import Mapping
from typing import Any

from rest_framework import parsers
from rest_framework.exceptions import ParseError


class JSONParser(parsers.JSONParser):
    """DRF's JSON parser, answering 400 for a document nested deeper than Python's recursion limit.

    Such a body fits well inside the size limit (``[`` five thousand times is 5 KB), and the
    standard library's decoder raises RecursionError for it, which DRF does not catch: a 500."""

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Mapping[str, Any] | None = None) -> Any:
        try:
            return super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise ParseError("JSON parse error - the document is nested too deeply.") from None
