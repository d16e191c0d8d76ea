"""A logging handler that never makes a request wait for the log stream.

With the standard StreamHandler every thread that logs takes the handler's lock and writes to stdout
itself: under load, request threads queue on that lock (profiled: most of a request's wall time).
Here the calling thread only renders its line (where its context and span are) and appends it to a
bounded queue; one background thread writes what has queued every few milliseconds, many lines per
write. When a burst outruns the writer, the line is dropped and counted (``log_lines_dropped_total``) instead of
blocking the request or growing memory without bound. Lines are written whole, one writer only, so
they never interleave; ``close`` (logging.shutdown at exit, and gunicorn's worker_exit) writes what
is left.

The writer is an operating-system thread even in a gevent worker (svc_common.server.gunicorn_worker), where
the threading module is patched to make greenlets: a greenlet writing to a full pipe would stop the
whole event loop, every request with it. So it is started, and sleeps, with the functions gevent
keeps as the originals, and it shares nothing with request code but the deque (atomic appends and
pops in C) and two flags.
"""

import collections
import contextlib
import logging
import os
import sys
import threading
import time
from typing import TextIO

from gevent.monkey import get_original
from prometheus_client import Counter

# The unpatched functions (the same ones where nothing is patched): an OS thread and a real sleep.
_start_os_thread = get_original("_thread", "start_new_thread")
_os_sleep = get_original("time", "sleep")

LOG_LINES_DROPPED = Counter(
    "log_lines_dropped",
    "Log lines dropped because the background writer could not keep up.",
)
# At 300-odd bytes a line, 10,000 queued lines are about 3 MB: seconds of a burst at full speed.
DEFAULT_CAPACITY = 10_000
_BATCH = 256  # lines joined into one write
_POLL_SECONDS = 0.005  # how long a line may wait in the queue while lines are coming
# Once nothing has come, the pause doubles up to this: an idle service's writer wakes 20 times a
# second instead of 200, and the first line after a quiet spell waits 50 ms at most.
_IDLE_POLL_SECONDS = 0.05


class BackgroundStreamHandler(logging.Handler):
    def __init__(self, stream: TextIO | None = None, capacity: int = DEFAULT_CAPACITY) -> None:
        super().__init__()
        self.stream = stream if stream is not None else sys.stdout
        self.capacity = capacity
        # A deque that the writer polls: appending is one atomic C call that wakes nobody. Profiled,
        # a queue.Queue's mutex was where request threads waited next, and a SimpleQueue's put, which
        # wakes the blocked writer, still took 13 % of the time request threads held the GIL.
        self.lines: collections.deque[str] = collections.deque()
        self._stopping = False
        self._running = False  # the writer thread of this process has started and not yet ended
        self._writing = False  # a batch taken from the deque and not yet written
        self._writer_pid = 0
        self._start_lock = threading.Lock()

    def handle(self, record: logging.LogRecord) -> bool:
        # No handler lock: rendering is per thread and the deque is thread-safe.
        if not self.filter(record):
            return False
        self.emit(record)
        return True

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        self.enqueue(line)

    def enqueue(self, line: str) -> None:
        """Queue a rendered line (structlog's own events come here straight: svc_common.observability.log_config)."""
        self._ensure_writer()
        if len(self.lines) >= self.capacity:  # racing threads may overshoot by a line each
            LOG_LINES_DROPPED.inc()
            return
        self.lines.append(line)

    def _ensure_writer(self) -> None:
        # Started on first use in the process that logs: a thread does not survive gunicorn's fork.
        if self._writer_pid == os.getpid():
            return
        with self._start_lock:
            if self._writer_pid != os.getpid():
                self._stopping = False
                self._running = True
                _start_os_thread(self._write_lines, ())
                self._writer_pid = os.getpid()

    def _write_lines(self) -> None:
        pause = _POLL_SECONDS
        try:
            while True:
                stopping = self._stopping
                wrote = self._write_queued()
                if stopping:
                    return
                pause = _POLL_SECONDS if wrote else min(pause * 2, _IDLE_POLL_SECONDS)
                _os_sleep(pause)
        finally:
            self._running = False

    def _write_queued(self) -> bool:
        """Write what is queued; whether there was anything."""
        wrote = False
        while self.lines:
            wrote = True
            batch: list[str] = []
            self._writing = True
            try:
                with contextlib.suppress(IndexError):
                    while len(batch) < _BATCH:
                        batch.append(self.lines.popleft())
                self.stream.write("\n".join(batch) + "\n")
                self.stream.flush()
            except (OSError, ValueError):
                return wrote  # stdout gone (the process is ending): nothing left to write to
            finally:
                self._writing = False
        return wrote

    def flush(self) -> None:
        """Wait, a few seconds at most, until the lines queued so far are written."""
        deadline = time.monotonic() + 5
        while self._writer_running() and (self.lines or self._writing) and time.monotonic() < deadline:
            time.sleep(_POLL_SECONDS)

    def _writer_running(self) -> bool:
        return self._running and self._writer_pid == os.getpid()

    def close(self) -> None:
        """Write what is queued and stop the writer (logging.shutdown calls this at exit), waiting
        a few seconds at most."""
        if self._writer_running():
            self._stopping = True
            deadline = time.monotonic() + 5
            while self._running and time.monotonic() < deadline:
                time.sleep(_POLL_SECONDS)  # in a gevent worker, this lets the event loop run meanwhile
        self._writer_pid = 0
        super().close()
