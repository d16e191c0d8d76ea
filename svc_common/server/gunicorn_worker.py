"""The services' gunicorn worker: gevent's, fair between keep-alive connections.

Why gevent: a request here is CPU work in one process (the in-memory store allows no second
worker), and gthread's eight threads spend much of that CPU handing the GIL to one another. Measured
with bench/ on the 2-core development machine, a WSGI callable answering fixed JSON ran about
1,570 req/s under gthread 1 x 8 and about 3,100 under this worker; the services' GET ran 0.6x and
1.9x of their gthread figures with and without observability (bench's ``shipped`` and ``bare``).

Why fair: gevent switches greenlets only when one would block. A keep-alive client as fast as wrk
on loopback (or Envoy) has sent its next request by the time the worker reads again, so that read
does not block and the same connection is served again and again while the others wait: with 16
connections the floor's p99 was 55 times its p50, and 1.4 s at 256 connections. Yielding once after
each request puts the connection at the back of the line: p99 within 1.7x of p50 at the same rate.

Everything on the request path cooperates with the event loop once gevent has patched the standard
library (which gunicorn does in each worker, before the app is loaded): requests and psycopg
sockets, the OTLP exporter, locks. The log writer is the exception on purpose: it is a real thread
(svc_common.observability.log_writer), so that a slow log reader never stops the loop.

Stopping, gunicorn's gevent worker notices SIGTERM within a second and then waits for every
connection to end, idle keep-alive ones included (a proxy holds those open for minutes): it drained
for the whole graceful timeout while new connections still queued on its listener. Here the listener
closes as soon as the signal arrives, so new connections are refused (a proxy may pass those on,
POSTs included), and connections waiting for their next request are closed; requests already
being read or answered finish, and their connections close after the answer (which, decided when
the request started, may still say keep-alive).
"""

import fcntl
import gc
import socket
import struct
import sys
import termios
import time
from functools import partial
from typing import Any

import gevent
from gevent.pool import Pool
from gevent.server import StreamServer
from gunicorn.sock import ssl_context
from gunicorn.workers.ggevent import GeventWorker

from svc_common.server.sockets import shut_down

_TICK = 0.1  # seconds between checks while running (for SIGTERM) and while draining
# With several workers on one listener: how long a worker leaves new connections to the others after
# taking one. Every idle worker is woken for a new connection and the first to accept takes it; a
# gevent worker is back at accept() at once, so one worker took all 32 keep-alive connections of a
# burst (tests/e2e/test_postgres_backend.py) and the other served nothing. The pause caps a worker
# at 1,000 new connections a second, more than it can serve requests on fresh connections.
_ACCEPT_PAUSE = 0.001


class TurnTakingStreamServer(StreamServer):  # type: ignore[misc]
    """gevent's StreamServer that, after each connection it accepts, stops accepting for a moment."""

    max_accept = 1  # one connection per turn: leave the rest of the queue to the other workers

    def do_read(self) -> Any:
        accepted = super().do_read()
        if accepted is not None:
            self.stop_accepting()
            gevent.spawn_later(_ACCEPT_PAUSE, self._resume_accepting)
        return accepted

    def _resume_accepting(self) -> None:
        if not self.closed:
            self.start_accepting()


def _unread_bytes(sock: socket.socket) -> int:
    """Bytes the kernel holds for ``sock`` that nobody has read yet (without reading or waiting)."""
    try:
        return int(struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0])
    except OSError:
        return 0


class _ListenerName:
    """What a connection's handler asks of its listener: the address it listens on (gunicorn reads
    ``getsockname()`` first thing, for the request's SERVER_NAME and SERVER_PORT). Read once, while
    the socket is open: a connection accepted while the worker stops is handled after its listener
    is closed (closed at once, so that new connections are refused), and asking a closed socket
    its name raised EBADF, which reset a request sent just before SIGTERM (seen under load)."""

    def __init__(self, listener: socket.socket) -> None:
        self.name = listener.getsockname()

    def getsockname(self) -> Any:
        return self.name


def load_lazy_parts() -> None:
    """Load now what the first request would otherwise load, so that the freeze covers it: Django
    imports the URLconf, and with it the views and about 430 modules (DRF's and drf-spectacular's
    views, jinja2...), on the first request. Unfrozen, their 36,000 objects were walked by every full
    collection (10-20 ms each under load, the event loop standing still), and the first request
    waited for the imports."""
    if "django.urls" in sys.modules:
        from django.urls import get_resolver

        get_resolver().reverse_dict  # noqa: B018  # imports the URLconf and indexes its routes


class FairGeventWorker(GeventWorker):  # type: ignore[misc]  # gunicorn ships no type information
    """gunicorn's GeventWorker (gunicorn.workers.ggevent), with the turn after each request and the
    prompt stop the module's docstring describes. Requests are parsed and answered by gunicorn's own
    code (``handle``, ``handle_request``), so a client sees the same bytes: tests/e2e/test_worker.py
    holds conversations with both workers and compares them."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.servers: list[StreamServer] = []
        # Each open client connection -> whether a request of it is being handled right now.
        self.connections: dict[socket.socket, bool] = {}

    def patch(self) -> None:
        super().patch()
        # psycopg picks its wait function when imported: a blocking one unless gevent has patched
        # select by then. Imported earlier (say the master loaded the settings), every database call
        # would stop the event loop, and the call deadline with it (svc_common.storage.postgres_repository).
        if "psycopg" in sys.modules:
            raise RuntimeError("psycopg was imported before gevent patched this worker: its waits would block")

    def run(self) -> None:
        """gunicorn's GeventWorker.run, with a prompt stop (see the module's docstring)."""
        # The app is loaded: its ~100,000 objects live as long as the worker. Out of the collector's
        # reach, a full collection walks only what requests left behind. Measured on the user service
        # with every span exported: full collections took 50-80 ms, stopping the event loop and every
        # request with it, against 16-40 ms frozen.
        load_lazy_parts()
        gc.freeze()
        for listener in self.sockets:
            listener.setblocking(1)
            ssl_args = {"ssl_context": ssl_context(self.cfg)} if self.cfg.is_ssl else {}
            server_class = TurnTakingStreamServer if self.cfg.workers > 1 else StreamServer
            server = server_class(
                listener,
                handle=partial(self.handle, _ListenerName(listener)),
                spawn=Pool(self.worker_connections),
                **ssl_args,
            )
            server.start()
            self.servers.append(server)

        while self.alive:
            self.notify()
            gevent.sleep(_TICK)

        for server in self.servers:
            # Serve what the kernel has queued already (a client that connected just before the
            # signal has sent its request; closed unaccepted, it would be reset), then close: new
            # connections are refused from here on.
            server.stop_accepting()
            while (accepted := server.do_read()) is not None:
                server.do_handle(*accepted)
            server.close()
        deadline = time.monotonic() + self.cfg.graceful_timeout
        while any(server.pool.free_count() != server.pool.size for server in self.servers):
            if time.monotonic() >= deadline:
                self.log.warning("Worker graceful timeout (pid:%s)", self.pid)
                for server in self.servers:
                    server.stop(timeout=1)
                return
            self.close_idle_connections()
            self.notify()
            gevent.sleep(_TICK)

    def close_idle_connections(self) -> None:
        """End the connections that wait for a next request which has not started to arrive."""
        for client, busy in list(self.connections.items()):
            if not busy and not _unread_bytes(client):
                shut_down(client.fileno())  # its greenlet reads the end and closes it

    def handle(self, listener: Any, client: socket.socket, addr: Any) -> None:
        self.connections[client] = False
        try:
            super().handle(listener, client, addr)
        finally:
            self.connections.pop(client, None)

    def handle_request(self, listener_name: Any, req: Any, sock: socket.socket, addr: Any) -> Any:
        self.connections[sock] = True
        try:
            return super().handle_request(listener_name, req, sock, addr)
        finally:
            if sock in self.connections:
                self.connections[sock] = False
            gevent.sleep(0)  # fairness: every other ready connection has its turn first
