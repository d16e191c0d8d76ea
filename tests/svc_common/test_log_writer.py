"""svc_common.observability.log_writer: request threads never wait for the log stream, lines stay whole, nothing
is lost but what a full queue drops (and counts), close() writes what is queued, and the handler and
listener write what the standard library's QueueHandler and QueueListener write for the same records."""

import io
import json
import logging
import logging.handlers
import os
import queue
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from svc_common.observability.log_config import json_formatter
from svc_common.observability.log_writer import BoundedSimpleQueue, DroppingQueueHandler, OSThreadQueueListener
from testsupport.services import poll_until


def dropped() -> float:
    return REGISTRY.get_sample_value("log_lines_dropped_total") or 0.0


def logger_with(handler: logging.Handler, formatter: logging.Formatter | None = None) -> logging.Logger:
    handler.setFormatter(formatter or json_formatter())
    logger = logging.getLogger(f"test.log_writer.{uuid.uuid4()}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    return logger


def test_many_threads_every_line_whole_and_written(tmp_path):
    path = tmp_path / "out.log"
    with open(path, "w") as stream:
        handler = DroppingQueueHandler(stream, capacity=100_000)
        logger = logger_with(handler)
        payload = "x" * 300  # lines of a realistic length, so that torn writes would show

        def write(thread: int) -> None:
            for n in range(2_000):
                logger.info("line %d %d %s", thread, n, payload)

        threads = [threading.Thread(target=write, args=(t,)) for t in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        handler.close()
    lines = path.read_text().splitlines()
    records = [json.loads(line) for line in lines]  # a torn or interleaved line fails here
    assert len(records) == 16 * 2_000
    assert {tuple(map(int, r["event"].split()[1:3])) for r in records} == {
        (t, n) for t in range(16) for n in range(2_000)
    }


class BlockedStream:
    """A stream whose writes wait until released: the log reader is stuck (a full pipe, say)."""

    def __init__(self) -> None:
        self.released = threading.Event()
        self.text: list[str] = []

    def write(self, text: str) -> int:
        self.released.wait()
        self.text.append(text)
        return len(text)

    def flush(self) -> None:
        pass


def test_a_stuck_stream_never_blocks_the_logging_thread_and_drops_are_counted():
    stream = BlockedStream()
    handler = DroppingQueueHandler(stream, capacity=100)
    logger = logger_with(handler)
    before = dropped()

    writer = threading.Thread(target=lambda: [logger.info("burst %d", n) for n in range(1_000)])
    writer.start()
    writer.join(timeout=10)
    assert not writer.is_alive(), "a logging call waited for the stuck stream"
    lost = dropped() - before
    # The queue holds 100 lines, and the writer thread the one line it is stuck writing.
    assert 1_000 - 100 - 1 <= lost < 1_000

    stream.released.set()
    handler.close()
    written = [json.loads(line) for line in "".join(stream.text).splitlines()]
    assert len(written) == 1_000 - lost
    numbers = [int(r["event"].split()[1]) for r in written]
    assert numbers == sorted(numbers)  # in order, whole


def test_close_writes_what_is_queued(tmp_path):
    path = tmp_path / "out.log"
    with open(path, "w") as stream:
        handler = DroppingQueueHandler(stream)
        logger = logger_with(handler)
        for n in range(500):
            logger.info("queued %d", n)
        handler.close()
    assert [json.loads(line)["event"] for line in path.read_text().splitlines()] == [f"queued {n}" for n in range(500)]


def test_close_gives_up_on_a_stuck_stream():
    """logging.shutdown at exit closes the handler: a stuck reader must not hold the exit for ever."""
    stream = BlockedStream()
    handler = DroppingQueueHandler(stream)
    logger_with(handler).info("never read")
    closing = threading.Thread(target=handler.close)
    closing.start()
    closing.join(timeout=10)
    assert not closing.is_alive()
    stream.released.set()


GEVENT_STUCK_READER = """
from gevent import monkey

monkey.patch_all()  # as gunicorn's gevent worker does before it loads the app

import logging, os, time
import gevent
from svc_common.observability.log_writer import DroppingQueueHandler
from svc_common.observability.log_config import json_formatter

_unread, write_end = os.pipe()  # nobody reads: the pipe fills, and a write to it blocks
handler = DroppingQueueHandler(os.fdopen(write_end, "w"), capacity=100_000)
handler.setFormatter(json_formatter())
logger = logging.getLogger("stuck")
logger.propagate = False
logger.setLevel(logging.INFO)
logger.addHandler(handler)

ticks = []
def tick():
    for _ in range(20):
        ticks.append(time.monotonic())
        gevent.sleep(0.01)

ticker = gevent.spawn(tick)
for n in range(5_000):  # about 1.7 MB of lines, far past what a pipe holds
    logger.info("line %d %s", n, "x" * 300)
ticker.join(timeout=10)
print(len(ticks), flush=True)
os._exit(0)  # the writer thread is stuck in write() for good; nothing to wait for
"""


def test_under_gevent_a_stuck_log_reader_never_stops_the_event_loop(tmp_path):
    """In a gevent worker the writer must be an OS thread: a greenlet blocked writing to a full pipe
    would stop every request of the worker."""
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, "-c", GEVENT_STUCK_READER], cwd=root, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["20"], "the event loop stopped while the log writer was stuck"


def test_an_idle_writer_sleeps_until_a_line_comes(tmp_path, monkeypatch):
    """An idle service's writer must not wake up to poll: it waits on the queue, and a line wakes it."""
    dequeues: list[bool] = []
    stock_dequeue = OSThreadQueueListener.dequeue

    def counted_dequeue(self, block):
        dequeues.append(block)
        return stock_dequeue(self, block)

    monkeypatch.setattr(OSThreadQueueListener, "dequeue", counted_dequeue)
    path = tmp_path / "out.log"
    with open(path, "w") as stream:
        handler = DroppingQueueHandler(stream)
        logger = logger_with(handler, logging.Formatter("%(message)s"))
        logger.info("first")
        poll_until(lambda: path.read_text(), lambda text: "first" in text, 5, lambda text: text)
        threading.Event().wait(0.5)  # idle
        assert dequeues == [True, True], "the idle writer woke up"  # "first", then waiting for the next
        logger.info("second")
        poll_until(lambda: path.read_text(), lambda text: "second" in text, 1, lambda text: text)
        handler.close()
    assert path.read_text().splitlines() == ["first", "second"]


def test_a_forked_child_writes_its_own_lines_and_not_its_parents():
    """Gunicorn forks its workers from a master that has logged: the worker needs a writer of its
    own, and what the master queued is the master's to write, once."""
    read_end, write_end = os.pipe()
    with os.fdopen(write_end, "w") as stream:
        handler = DroppingQueueHandler(stream)
        logger = logger_with(handler, logging.Formatter("%(message)s"))
        logger.info("parent before fork")
        child = os.fork()
        if child == 0:
            try:
                logger.info("child")
                handler.close()
            finally:
                os._exit(0)
        os.waitpid(child, 0)
        logger.info("parent after fork")
        handler.close()
    with os.fdopen(read_end) as pipe:
        lines = pipe.read().splitlines()
    assert sorted(lines) == ["child", "parent after fork", "parent before fork"]


class MarkInPlace(logging.Filter):
    def filter(self, record):
        record.msg = f"marked {record.msg}"
        return True


class ReplaceRecord(logging.Filter):
    """A filter that returns a replacement record: Python 3.12 and later log the replacement."""

    def filter(self, record):
        return logging.makeLogRecord({**record.__dict__, "msg": f"replaced {record.msg}"})


class DropOdd(logging.Filter):
    def filter(self, record):
        return not record.args or record.args[0] % 2 == 0


def write_through(handler: logging.handlers.QueueHandler, stream: io.StringIO, filters) -> list[str]:
    for handler_filter in filters:
        handler.addFilter(handler_filter)
    logger = logger_with(handler, logging.Formatter("%(levelname)s %(name)s %(message)s"))
    logger.name = "compared"
    for n in range(50):
        logger.warning("line %d of %s", n, "fifty")
    try:
        raise ValueError("boom")
    except ValueError:
        logger.exception("failed")
    return stream.getvalue().splitlines()


@pytest.mark.parametrize(
    "filter_classes",
    [[], [MarkInPlace], [ReplaceRecord], [DropOdd]],
    ids=["none", "in-place", "replacement", "dropping"],
)
def test_the_handler_writes_what_the_stock_queue_handler_and_listener_write(filter_classes):
    filters = [filter_class() for filter_class in filter_classes]
    stock_stream, our_stream = io.StringIO(), io.StringIO()
    stock_handler = logging.handlers.QueueHandler(queue.Queue())
    stock_listener = logging.handlers.QueueListener(stock_handler.queue, logging.StreamHandler(stock_stream))
    stock_listener.start()
    try:
        write_through(stock_handler, stock_stream, filters)
    finally:
        stock_listener.stop()
    stock_lines = stock_stream.getvalue().splitlines()
    ours = DroppingQueueHandler(our_stream)
    write_through(ours, our_stream, filters)
    ours.close()
    our_lines = our_stream.getvalue().splitlines()
    assert our_lines == stock_lines
    assert any("boom" in line for line in our_lines)


def test_a_stack_is_written_once():
    """The stack is in the rendered line; 3.11's stock QueueHandler leaves it on the queued record as
    well, where the writer's formatter would write it a second time, after the JSON."""
    stream = io.StringIO()
    handler = DroppingQueueHandler(stream)
    logger_with(handler, logging.Formatter("%(message)s")).info("with a stack", stack_info=True)
    handler.close()
    assert stream.getvalue().count("Stack (most recent call last)") == 1


def test_the_listener_hands_records_on_as_the_stock_listener_does():
    """Same records, same handlers (one with a level above some records, respected or not): the
    same lines, in the same order."""
    records = [
        logging.makeLogRecord(
            {"name": "compared", "levelno": level, "levelname": logging.getLevelName(level), "msg": f"record {n}"}
        )
        for n, level in enumerate([logging.INFO, logging.WARNING, logging.DEBUG, logging.ERROR] * 5)
    ]
    for respect_level in (False, True):
        outputs = []
        for listener_class, make_queue in (
            (logging.handlers.QueueListener, queue.Queue),
            (OSThreadQueueListener, lambda: BoundedSimpleQueue(100)),
        ):
            stream = io.StringIO()
            handler = logging.StreamHandler(stream)
            handler.setLevel(logging.WARNING)
            record_queue = make_queue()
            listener = listener_class(record_queue, handler, respect_handler_level=respect_level)
            listener.start()
            for record in records:
                record_queue.put_nowait(record)
            listener.stop()
            outputs.append(stream.getvalue())
        stock, ours = outputs
        assert ours == stock and ours.count("\n") == (10 if respect_level else 20)


def test_the_bounded_queue_refuses_past_its_capacity_but_never_its_sentinel():
    bounded = BoundedSimpleQueue(2)
    bounded.put_nowait(1)
    bounded.put_nowait(2)
    with pytest.raises(queue.Full):
        bounded.put_nowait(3)
    bounded.put("sentinel")
    assert [bounded.get() for _ in range(3)] == [1, 2, "sentinel"]


class GatedStream(io.StringIO):
    """Holds the writer at its first write until the gate opens, and counts flushes."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.flushes = 0

    def write(self, text):
        self.gate.wait(10)
        return super().write(text)

    def flush(self):
        self.flushes += 1
        super().flush()


def test_a_burst_is_flushed_once_the_queue_is_empty_not_after_every_line():
    stream = GatedStream()
    handler = DroppingQueueHandler(stream)
    logger = logger_with(handler, logging.Formatter("%(message)s"))
    for n in range(100):
        logger.info("line %d", n)  # queued while the writer waits at its first write
    stream.gate.set()
    poll_until(lambda: stream.getvalue(), lambda text: text.count("\n") == 100, 5, lambda text: text[-200:])
    poll_until(lambda: stream.flushes, lambda flushes: flushes >= 1, 5, lambda flushes: flushes)
    assert stream.flushes == 1, f"{stream.flushes} flushes for a burst of 100 lines"
    logger.info("after the burst")  # alone in the queue: flushed at once, not held for the next
    poll_until(lambda: stream.flushes, lambda flushes: flushes >= 2, 5, lambda flushes: flushes)
    assert "after the burst" in stream.getvalue()
    handler.close()
    assert stream.getvalue().splitlines() == [*(f"line {n}" for n in range(100)), "after the burst"]


class CountingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.flushes = 0

    def flush(self):
        self.flushes += 1
        super().flush()


def test_lines_that_trickle_in_are_gathered_not_written_one_wake_up_each():
    """A line every 0.5 ms for 0.2 s: the writer lets the lines of GATHER_SECONDS gather between its
    wake-ups, so it flushes once per gathering (about 40 times), not once a line (400)."""
    import time

    from svc_common.observability.log_writer import GATHER_SECONDS

    stream = CountingStream()
    handler = DroppingQueueHandler(stream)
    logger = logger_with(handler, logging.Formatter("%(message)s"))
    lines, seconds = 400, 0.2
    started = time.monotonic()
    for n in range(lines):
        logger.info("line %d", n)
        time.sleep(max(0.0, started + (n + 1) * seconds / lines - time.monotonic()))
    handler.close()
    elapsed = time.monotonic() - started
    assert stream.getvalue().splitlines() == [f"line {n}" for n in range(lines)]
    # One flush per gathering at most, plus close()'s last one; never one per line.
    assert stream.flushes <= elapsed / GATHER_SECONDS + 2 < lines / 2, (stream.flushes, elapsed)
