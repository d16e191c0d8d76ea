"""A logging handler that never makes a request wait for the log stream.

With the standard StreamHandler every thread that logs takes the handler's lock and writes to stdout
itself: under load, request threads queue on that lock (profiled: most of a request's wall time).
Here the calling thread only renders its line (where its context and span are) and hands it to a
bounded queue; one background thread writes what has queued, many lines per write. When a burst
outruns the writer, the line is dropped and counted (``log_lines_dropped_total``) instead of
blocking the request or growing memory without bound. Lines are written whole, one writer only, so
they never interleave; ``close`` (logging.shutdown at exit, and gunicorn's worker_exit) writes what
is left.
"""

import logging
import os
import queue
import sys
import threading
import time
from typing import TextIO

from prometheus_client import Counter

LOG_LINES_DROPPED = Counter(
    "log_lines_dropped",
    "Log lines dropped because the background writer could not keep up.",
)
# At 300-odd bytes a line, 10,000 queued lines are about 3 MB: seconds of a burst at full speed.
DEFAULT_CAPACITY = 10_000
_BATCH = 256  # lines joined into one write


class BackgroundStreamHandler(logging.Handler):
    def __init__(self, stream: TextIO | None = None, capacity: int = DEFAULT_CAPACITY) -> None:
        super().__init__()
        self.stream = stream if stream is not None else sys.stdout
        # SimpleQueue, not Queue: Queue's Python-level mutex became the new point every request thread
        # waited on (profiled); SimpleQueue's put is one C call. It has no bound of its own, so emit
        # checks its size first: a burst may overshoot the capacity by at most one line per thread.
        self.lines: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self.capacity = capacity
        self._writer: threading.Thread | None = None
        self._writer_pid = 0
        self._start_lock = threading.Lock()

    def handle(self, record: logging.LogRecord) -> bool:
        # No handler lock: rendering is per thread and the queue is thread-safe.
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
        self._ensure_writer()
        if self.lines.qsize() >= self.capacity:
            LOG_LINES_DROPPED.inc()
            return
        self.lines.put(line)

    def _ensure_writer(self) -> None:
        # Started on first use in the process that logs: a thread does not survive gunicorn's fork.
        if self._writer_pid == os.getpid():
            return
        with self._start_lock:
            if self._writer_pid != os.getpid():
                self._writer = threading.Thread(target=self._write_lines, name="log-writer", daemon=True)
                self._writer.start()
                self._writer_pid = os.getpid()

    def _write_lines(self) -> None:
        while True:
            line = self.lines.get()
            batch = []
            while line is not None:
                batch.append(line)
                if len(batch) >= _BATCH:
                    break
                try:
                    line = self.lines.get_nowait()
                except queue.Empty:
                    break
            if batch:
                try:
                    self.stream.write("\n".join(batch) + "\n")
                    self.stream.flush()
                except (OSError, ValueError):
                    pass  # stdout gone (the process is ending): nothing left to write to
            if line is None:
                return

    def flush(self) -> None:
        """Wait, a few seconds at most, until the lines queued so far have been taken by the writer."""
        deadline = time.monotonic() + 5
        while self._writer_running() and not self.lines.empty() and time.monotonic() < deadline:
            time.sleep(0.005)

    def _writer_running(self) -> bool:
        return self._writer is not None and self._writer_pid == os.getpid() and self._writer.is_alive()

    def close(self) -> None:
        """Write what is queued and stop the writer (logging.shutdown calls this at exit)."""
        if self._writer is not None and self._writer_running():
            self.lines.put(None)
            self._writer.join(timeout=5)
        self._writer = None
        self._writer_pid = 0
        super().close()
