"""Content negotiation with the API's common case decided at once."""

from collections.abc import Iterable
from typing import Any

from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.renderers import BaseRenderer
from rest_framework.request import Request

# What API clients send (no header reads as */*, as in DRF): every one of them gets the first renderer, JSON.
_ANY_JSON = frozenset({"*/*", "application/json"})


class JSONFirstContentNegotiation(DefaultContentNegotiation):
    """DRF's DefaultContentNegotiation, with its answer for the API's common case given at once: a
    request accepting JSON or anything (no Accept header, ``*/*`` or ``application/json``), with no
    ``?format=`` and no format suffix, gets the first renderer (JSON), which is what DRF's ranking
    chooses for it, without parsing the Accept header into media types and ranking them against every
    renderer (profiled: about 6 % of a GET). Everything else (a browser, whose Accept asks for HTML
    first; an empty Accept header, which DRF answers with 406) goes through DRF's negotiation. Public
    names only; a test compares both on a table of Accept headers, queries and suffixes."""

    def select_renderer(
        self, request: Request, renderers: Iterable[BaseRenderer], format_suffix: str | None = None
    ) -> Any:
        renderers = list(renderers)  # DRF passes the view's list
        first = renderers[0] if renderers else None
        if (
            first is not None
            and first.media_type == "application/json"
            and format_suffix is None
            and not request.META.get("QUERY_STRING")
            and request.META.get("HTTP_ACCEPT", "*/*").strip() in _ANY_JSON
        ):
            return first, first.media_type
        return super().select_renderer(request, renderers, format_suffix)
