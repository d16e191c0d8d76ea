"""A threaded HTTP server on a free loopback port, run in the background for the length of a `with`."""

import threading
from http.server import ThreadingHTTPServer


class LoopbackHTTPServer:
    """Base for the test servers: subclasses provide ``_handler_class()`` and call ``_start_server()``."""

    def _start_server(self):
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def _handler_class(self):
        raise NotImplementedError

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._server.shutdown()
        self._server.server_close()
