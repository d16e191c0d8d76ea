"""Gunicorn's own error answers as JSON, like every other answer of the services, and one log line each.

Gunicorn refuses some requests before Django sees them (a request line over 4094 bytes: 414, an
invalid or oversized header: 400 or 431) and writes an HTML page for them through
``gunicorn.util.write_error``, its only writer of such pages. Replacing that function keeps the
promise that anything a client sends gets a 4xx JSON body.

Such a request never reaches Django, which logs every other one: ``write_json_error`` logs it, as
``request_refused`` with the status, reason, detail, peer and a request id of its own. Gunicorn logs
the same refusal as a warning ("Invalid request from ip=...: ...") just before; ``RefusalWarningFilter``,
on the ``gunicorn.error`` logger (svc_common.server.gunicorn_logging), drops that one, so a refusal
is one line.
"""

import json
import logging
import socket
import uuid

import structlog
from gunicorn import util

logger = structlog.get_logger("svc_common.server.gunicorn_errors")

# How gunicorn's worker (gunicorn.workers.base.Worker.handle_error) starts its warning for a request
# it refuses; tests/e2e/test_logging.py checks through a socket that a refusal is one line.
GUNICORN_REFUSAL_WARNING = "Invalid request from ip="


def peer_of(sock: socket.socket) -> str | None:
    try:
        address = sock.getpeername()
    except OSError:  # the client has gone already
        return None
    return str(address[0]) if isinstance(address, tuple) else (address or None)


def write_json_error(sock: socket.socket, status_int: int, reason: str, mesg: str) -> None:
    logger.warning(
        "request_refused",
        status=status_int,
        reason=reason,
        detail=mesg,
        peer=peer_of(sock),
        request_id=str(uuid.uuid4()),
    )
    body = json.dumps({"detail": f"{reason}: {mesg}" if mesg else reason}).encode()
    head = (
        f"HTTP/1.1 {status_int} {reason}\r\n"
        "Connection: close\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode("latin1")
    util.write_nonblock(sock, head + body)


class RefusalWarningFilter(logging.Filter):
    """Drops gunicorn's warning about a refused request: ``write_json_error`` logs that refusal."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (isinstance(record.msg, str) and record.msg.startswith(GUNICORN_REFUSAL_WARNING))


def install() -> None:
    util.write_error = write_json_error
