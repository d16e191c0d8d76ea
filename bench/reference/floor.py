"""The server's floor: a WSGI callable answering fixed JSON, under our worker model (bench's ``floor``)."""

from collections.abc import Callable, Iterable
from typing import Any

BODY = b'{"id":1,"name":"Bench","email":"bench@example.com"}'
HEADERS = [("Content-Type", "application/json"), ("Content-Length", str(len(BODY)))]


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    start_response("200 OK", HEADERS)
    return [BODY]
