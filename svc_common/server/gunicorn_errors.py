"""Gunicorn's own error answers as JSON, like every other answer of the services.

Gunicorn refuses some requests before Django sees them (a request line over 4094 bytes: 414, an
invalid or oversized header: 400 or 431) and writes an HTML page for them through
``gunicorn.util.write_error``, its only writer of such pages. Replacing that function keeps the
promise that anything a client sends gets a 4xx JSON body.
"""

import json
import socket
import uuid

import structlog
from gunicorn import util

logger = structlog.get_logger("svc_common.server.gunicorn_errors")


def write_json_error(sock: socket.socket, status_int: int, reason: str, mesg: str) -> None:
    # Such a request never reaches Django, which logs every other one: log it here, under an id of
    # its own like any request.
    logger.warning("request_refused", status=status_int, reason=reason, detail=mesg, request_id=uuid.uuid4().hex)
    body = json.dumps({"detail": f"{reason}: {mesg}" if mesg else reason}).encode()
    head = (
        f"HTTP/1.1 {status_int} {reason}\r\n"
        "Connection: close\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode("latin1")
    util.write_nonblock(sock, head + body)


def install() -> None:
    util.write_error = write_json_error
