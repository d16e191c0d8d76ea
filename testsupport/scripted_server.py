"""A real HTTP server on loopback that answers from a script, to make a dependency fail on purpose.

Each request takes the next step of the script (the last step repeats): an HTTP status, a delay
before answering, a dropped connection, or forwarding to a real upstream. Every request is recorded
with its path, headers and arrival time, so tests can count attempts and read forwarded headers.
"""

import contextlib
import http.client
import json
import socket
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from mesh_rehearsal.http_server import LoopbackHTTPServer, QuietHandler


@dataclass(frozen=True)
class Step:
    status: int = 200
    body: dict | None = None
    delay: float = 0.0
    drop: bool = False
    proxy_to: str | None = None
    raw: bytes | None = None  # sent as text/plain instead of a JSON body (a proxy's own answer)
    close_after: bool = False  # end the connection after answering, unannounced (an idle keep-alive timeout)


def respond(status, body=None, delay=0.0):
    return Step(status=status, body=body, delay=delay)


def respond_then_close(status, body=None):
    """Answer as for keep-alive, then close the connection, as a server does when a kept-alive
    connection has been idle too long (no ``Connection: close`` in the answer)."""
    return Step(status=status, body=body, close_after=True)


def respond_text(status, text=b""):
    """An answer that is not the service's JSON, as a proxy in between gives (Envoy's 404 for no route)."""
    return Step(status=status, raw=text)


def drop():
    return Step(drop=True)


def proxy(url):
    return Step(proxy_to=url)


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict
    at: float
    client_port: int


@dataclass
class ScriptedServer(LoopbackHTTPServer):
    steps: list[Step]
    requests: list[Recorded] = field(default_factory=list)

    def __post_init__(self):
        self._lock = threading.Lock()
        self._start_server()

    def _next_step(self, handler) -> Step:
        with self._lock:
            index = len(self.requests)
            self.requests.append(
                Recorded(
                    handler.command,
                    handler.path,
                    {k.lower(): v for k, v in handler.headers.items()},
                    time.monotonic(),
                    handler.client_address[1],
                )
            )
            return self.steps[min(index, len(self.steps) - 1)]

    def _handler_class(self):
        server = self

        class Handler(QuietHandler):
            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                step = server._next_step(self)
                if step.delay:
                    time.sleep(step.delay)
                if step.drop:
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                if step.proxy_to:
                    status, payload, content_type = _forward(step.proxy_to, self.command, self.path, self.headers, body)
                elif step.raw is not None:
                    status, payload, content_type = step.status, step.raw, "text/plain"
                else:
                    status = step.status
                    payload = json.dumps(step.body if step.body is not None else {"status": status}).encode()
                    content_type = "application/json"
                with contextlib.suppress(OSError):  # the client gave up (its timeout) before we answered
                    self._answer(status, payload, content_type)
                if step.close_after:
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True

            do_GET = do_POST = do_PUT = do_DELETE = _handle

        return Handler


def _forward(base_url, method, path, headers, body):
    parts = urlsplit(base_url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        forwarded = {k: v for k, v in headers.items() if k.lower() not in {"host", "connection"}}
        connection.request(method, path, body=body or None, headers=forwarded)
        response = connection.getresponse()
        return response.status, response.read(), response.getheader("Content-Type", "application/json")
    finally:
        connection.close()
