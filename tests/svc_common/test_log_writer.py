"""svc_common.observability.log_writer: request threads never wait for the log stream, lines stay whole, nothing
is lost but what a full queue drops (and counts), and close() writes what is queued."""

import json
import logging
import subprocess
import sys
import threading
import uuid
from pathlib import Path

from prometheus_client import REGISTRY

from svc_common.observability.log_config import json_formatter
from svc_common.observability.log_writer import BackgroundStreamHandler
from testsupport.services import poll_until


def dropped() -> float:
    return REGISTRY.get_sample_value("log_lines_dropped_total") or 0.0


def logger_with(handler: logging.Handler) -> logging.Logger:
    handler.setFormatter(json_formatter())
    logger = logging.getLogger(f"test.log_writer.{uuid.uuid4()}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    return logger


def test_many_threads_every_line_whole_and_written(tmp_path):
    path = tmp_path / "out.log"
    with open(path, "w") as stream:
        handler = BackgroundStreamHandler(stream, capacity=100_000)
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
    handler = BackgroundStreamHandler(stream, capacity=100)
    logger = logger_with(handler)
    before = dropped()

    writer = threading.Thread(target=lambda: [logger.info("burst %d", n) for n in range(1_000)])
    writer.start()
    writer.join(timeout=10)
    assert not writer.is_alive(), "a logging call waited for the stuck stream"
    lost = dropped() - before
    # The queue holds 100 lines and the writer thread at most one batch it took before it stuck.
    assert 1_000 - 100 - 256 <= lost < 1_000

    stream.released.set()
    handler.close()
    written = [json.loads(line) for line in "".join(stream.text).splitlines()]
    assert len(written) == 1_000 - lost
    numbers = [int(r["event"].split()[1]) for r in written]
    assert numbers == sorted(numbers)  # in order, whole


def test_close_writes_what_is_queued(tmp_path):
    path = tmp_path / "out.log"
    with open(path, "w") as stream:
        handler = BackgroundStreamHandler(stream)
        logger = logger_with(handler)
        for n in range(500):
            logger.info("queued %d", n)
        handler.close()
    assert [json.loads(line)["event"] for line in path.read_text().splitlines()] == [f"queued {n}" for n in range(500)]


GEVENT_STUCK_READER = """
from gevent import monkey

monkey.patch_all()  # as gunicorn's gevent worker does before it loads the app

import logging, os, time
import gevent
from svc_common.observability.log_writer import BackgroundStreamHandler
from svc_common.observability.log_config import json_formatter
from testsupport.services import poll_until

_unread, write_end = os.pipe()  # nobody reads: the pipe fills, and a write to it blocks
handler = BackgroundStreamHandler(os.fdopen(write_end, "w"), capacity=100_000)
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


def test_an_idle_writer_backs_off_and_comes_back_when_lines_do(tmp_path, monkeypatch):
    """An idle service's writer must not wake 200 times a second forever; a burst of lines brings
    the short pause back."""
    from svc_common.observability import log_writer

    pauses: list[float] = []
    real_sleep = log_writer._os_sleep

    def recording_sleep(seconds: float) -> None:
        pauses.append(seconds)
        real_sleep(seconds)

    monkeypatch.setattr(log_writer, "_os_sleep", recording_sleep)
    path = tmp_path / "out.log"
    with open(path, "w") as stream:
        handler = BackgroundStreamHandler(stream)
        handler.enqueue("first")
        poll_until(lambda: path.read_text(), lambda text: "first" in text, 5, lambda text: text)
        poll_until(lambda: pauses[-3:], lambda last: last == [log_writer._IDLE_POLL_SECONDS] * 3, 5, repr)
        idle_at = len(pauses)
        handler.enqueue("second")
        poll_until(lambda: path.read_text(), lambda text: "second" in text, 5, lambda text: text)
        poll_until(lambda: pauses[idle_at:], lambda after: log_writer._POLL_SECONDS in after, 5, repr)
        handler.close()
    assert path.read_text().splitlines() == ["first", "second"]
    assert max(pauses) == log_writer._IDLE_POLL_SECONDS
