"""Log lines written by a thread of their own, so that a request never waits for the log stream.

The standard library's pattern (logging cookbook, "Dealing with handlers that block"): the root
logger's handler is a ``logging.handlers.QueueHandler``, which formats each record into its JSON line
in the thread that logs (where the request's context and span are) and queues it; a
``logging.handlers.QueueListener`` hands what is queued to a plain ``logging.StreamHandler`` on stdout,
in a thread of its own. Lines are written whole, by one writer, so they never interleave.

What is ours, each on a documented hook of those classes:

- The queue is bounded, and ``DroppingQueueHandler.enqueue`` counts a line that does not fit
  (``queue.Full``) in ``log_lines_dropped_total`` instead of blocking the request or growing memory
  without bound: a stuck log reader (a full pipe) costs lines, counted and alerted on
  (prometheus/alerts.yml), never requests.
- The listener's thread is an operating-system thread even in a gevent worker
  (svc_common.server.gunicorn_worker), where the threading module is patched to make greenlets: a
  greenlet writing to a full pipe would stop the whole event loop, every request with it. So the
  thread is started with, and the queue built on, what gevent keeps as the originals
  (``gevent.monkey.get_original``, which returns the module's own object where nothing is patched).
- The listener starts on the first line of each process: a thread does not survive gunicorn's fork.
  ``close`` (logging.shutdown at exit, gunicorn's worker_exit, a new dictConfig) writes what is queued.
"""

import contextlib
import logging
import logging.handlers
import os
import queue
import sys
from typing import Any, TextIO

from gevent.monkey import get_original
from prometheus_client import Counter

# The unpatched originals: an OS thread, an OS lock, and the C SimpleQueue whose blocking get waits
# on an OS lock (gevent replaces queue.Queue and SimpleQueue with greenlet queues, and a Queue made
# after patching would take its locks from the patched threading module).
_start_os_thread, _allocate_os_lock = get_original("_thread", ["start_new_thread", "allocate_lock"])
_OSSimpleQueue = get_original("queue", "SimpleQueue")
_os_sleep = get_original("time", "sleep")

LOG_LINES_DROPPED = Counter(
    "log_lines_dropped",
    "Log lines dropped because the log writer thread could not keep up.",
)
# A queued access line (the rendered line and the LogRecord around it) takes about 800 bytes
# (tracemalloc): 10,000 of them are about 8 MB, seconds of a burst at full speed.
DEFAULT_CAPACITY = 10_000
# How long the writer lets lines gather once it has written all there was: each wake-up of its thread
# takes the GIL from the thread serving requests, and waking for every line cost a busy worker about a
# fifth of its GETs (wrk, 16 connections); once per few milliseconds, many lines to a write, it does
# not. A line waits this long at most before it is written.
GATHER_SECONDS = 0.005
# How long close() waits for the writer to write what is queued: a stuck stream must not hold the
# process's exit for ever.
CLOSE_TIMEOUT_SECONDS = 5.0


class BoundedSimpleQueue:
    """The queue between the handler and the listener, with the methods they call.

    ``put_nowait`` raises ``queue.Full`` once ``capacity`` items wait (threads racing past the check
    may overshoot by one item each); ``put`` always queues (the listener's stop sentinel must get
    through a full queue); ``get`` blocks on an OS lock, so an idle writer sleeps until a line comes.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.items = _OSSimpleQueue()

    def put_nowait(self, item: Any) -> None:
        if self.items.qsize() >= self.capacity:
            raise queue.Full
        self.items.put_nowait(item)

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        self.items.put(item)

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        return self.items.get(block, timeout)

    def qsize(self) -> int:
        return int(self.items.qsize())


class OSThreadQueueListener(logging.handlers.QueueListener):
    """``logging.handlers.QueueListener`` whose thread is an operating-system thread under gevent too.

    Reproduces the stock ``start``/``stop`` and the loop of its thread (dequeue a record, hand it to
    the handlers, until the stop sentinel), through the class's public hooks (``dequeue``, ``handle``,
    ``enqueue_sentinel``): the stock ``start`` makes a ``threading.Thread``, which is a greenlet once
    gevent has patched threading. ``stop`` waits ``timeout`` seconds at most for the thread to write
    what is queued (the stock one waits for ever, which a stuck stream would make an exit that hangs).
    tests/svc_common/test_log_writer.py compares it with the stock listener on the same records.
    """

    def __init__(self, queue: Any, *handlers: logging.Handler, respect_handler_level: bool = False) -> None:
        super().__init__(queue, *handlers, respect_handler_level=respect_handler_level)
        self.stop_sentinel = object()
        self.running: Any = None  # an OS lock held while the thread runs

    def start(self) -> None:
        running = _allocate_os_lock()
        running.acquire()
        self.running = running
        _start_os_thread(self.serve, (running,))

    def serve(self, running: Any) -> None:
        try:
            while (record := self.dequeue(True)) is not self.stop_sentinel:
                self.handle(record)
        finally:
            running.release()

    def enqueue_sentinel(self) -> None:
        # put, not put_nowait: a BoundedSimpleQueue refuses put_nowait when full, and this must get in.
        queue_with_put: BoundedSimpleQueue | queue.Queue[Any] = self.queue  # type: ignore[assignment]
        queue_with_put.put(self.stop_sentinel)

    def stop(self, timeout: float = CLOSE_TIMEOUT_SECONDS) -> None:
        if self.running is None:
            return
        running, self.running = self.running, None
        self.enqueue_sentinel()
        if running.acquire(timeout=timeout):
            running.release()


class LineWritingListener(OSThreadQueueListener):
    """The writer of ``DroppingQueueHandler``'s rendered lines (strings, see its ``prepare``): what a
    ``logging.StreamHandler`` on the listener did with each (the line and its terminator written to
    the stream, an error reported through ``Handler.handleError``), with the stream flushed when the
    queue has no more lines rather than after every one, so a burst is written in large writes, as
    the old writer wrote 256 lines at a time. ``handle`` is the listener's documented hook for what
    is done with each dequeued item. tests/svc_common/test_log_writer.py compares the lines written
    with the stock ``QueueHandler``, ``QueueListener`` and ``StreamHandler`` on the same records."""

    def __init__(self, queue: BoundedSimpleQueue, stream: TextIO) -> None:
        self.stream_handler = logging.StreamHandler(stream)  # its terminator, and its handleError
        super().__init__(queue)
        self.lines = queue
        self.stream = stream

    def dequeue(self, block: bool) -> Any:
        """The stock ``dequeue`` (the listener's documented hook for how items are taken), after a
        pause of ``GATHER_SECONDS`` whenever the queue is empty: the lines of those milliseconds are
        then written together, and the writer's thread wakes a few hundred times a second at most
        rather than once a line."""
        if self.lines.qsize() == 0:
            _os_sleep(GATHER_SECONDS)
        return super().dequeue(block)

    def handle(self, line: Any) -> None:
        try:
            self.stream.write(line + self.stream_handler.terminator)
            if self.lines.qsize() == 0:
                self.stream.flush()
        except Exception:
            self.stream_handler.handleError(logging.makeLogRecord({"msg": line}))

    def serve(self, running: Any) -> None:
        # The stock loop, then a last flush in this thread: the stop sentinel may have been queued
        # behind the last line, which then found the queue not empty and left it unflushed.
        try:
            while (line := self.dequeue(True)) is not self.stop_sentinel:
                self.handle(line)
            with contextlib.suppress(Exception):  # a closed stream: what was written, was written
                self.stream.flush()
        finally:
            running.release()


class DroppingQueueHandler(logging.handlers.QueueHandler):
    """The root logger's handler (svc_common.observability.log_config): each record rendered by this
    handler's formatter in the thread that logs, queued, and written to ``stream`` by an
    ``OSThreadQueueListener`` started on the process's first line; a record that finds the queue full
    is dropped and counted."""

    def __init__(self, stream: TextIO | None = None, capacity: int = DEFAULT_CAPACITY) -> None:
        super().__init__(BoundedSimpleQueue(capacity))
        self.stream = stream if stream is not None else sys.stdout
        self.capacity = capacity
        self.listener: OSThreadQueueListener | None = None
        self.listener_pid = 0
        self.start_lock = _allocate_os_lock()

    def prepare(self, record: logging.LogRecord) -> Any:
        """The rendered line itself is queued, not a copy of the record around it: the override
        ``QueueHandler.prepare``'s documentation suggests ("convert the record to a dict or JSON
        string"). The stock one formats the record and then copies it (``copy.copy``) to queue the
        copy, and the writer's ``StreamHandler`` formatted that copy once more (``%(message)s``)."""
        return self.format(record)

    def enqueue(self, record: logging.LogRecord) -> None:
        if self.listener_pid != os.getpid():
            self.start_listener()
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            LOG_LINES_DROPPED.inc()

    def start_listener(self) -> None:
        with self.start_lock:
            if self.listener_pid == os.getpid():
                return
            # A fresh queue: what a parent process queued before it forked is the parent's to write.
            self.queue = BoundedSimpleQueue(self.capacity)
            self.listener = LineWritingListener(self.queue, self.stream)
            self.listener.start()
            self.listener_pid = os.getpid()

    def close(self) -> None:
        """Write what is queued and stop the writer, waiting ``CLOSE_TIMEOUT_SECONDS`` at most."""
        with self.start_lock:
            if self.listener is not None and self.listener_pid == os.getpid():
                self.listener.stop()
            self.listener, self.listener_pid = None, 0
        super().close()
