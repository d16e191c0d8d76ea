"""Helpers for the container suite: the Docker daemon, the images, the Compose stack and a bounded load.

Every request from the host goes to a port published on 127.0.0.1; containers reach each other by name
inside their own network. A missing tool (dockerd, docker, docker-compose, mmdebstrap) FAILS a test.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.client import HTTPConnection, HTTPException
from pathlib import Path

import pytest

# The images, the Compose stack and the docker client: bench's, which bench/pod_usage.py drives too.
from bench.compose_stack import (  # noqa: F401 (the suite's modules take these names from here)
    APP_SERVICES,
    COMPOSE_FILE,
    DATABASE_IMAGE_ENV,
    DATABASE_SERVICE,
    REPO_ROOT,
    SCALE,
    Stack,
    docker,
    docker_cli,
    inspect,
    local_images,
    wait_healthy,
)


def database_host_in(config: dict[str, str]) -> tuple[str, int]:
    """The host and port the services' rendered configuration points at for their database."""
    from urllib.parse import urlsplit

    url = urlsplit(config["DATABASE_URL"])
    return url.hostname, url.port or 5432


# --------------------------------------------------------------------------------------------
# The daemon
# --------------------------------------------------------------------------------------------


def daemon_answers() -> bool:
    result = subprocess.run(
        [docker_cli(), "version", "--format", "{{.Server.Version}}"], capture_output=True, text=True, timeout=20
    )
    return result.returncode == 0


class Daemon:
    """dockerd started by this session when nothing answered on the socket (there is no systemd), and
    stopped at its end; a daemon that was already running is used and left alone."""

    def __init__(self, log_path: Path):
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    def ensure(self) -> None:
        if daemon_answers():
            return
        dockerd = shutil.which("dockerd") or "/usr/sbin/dockerd"
        if not os.path.exists(dockerd):
            pytest.fail("dockerd not found: Debian's docker.io is in tools/apt-packages.txt")
        if os.geteuid() != 0:
            pytest.fail("nothing answers on the Docker socket and dockerd needs root to start")
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen([dockerd], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"dockerd exited ({self.process.returncode}): {self.log_path.read_text()[-2000:]}")
            if daemon_answers():
                return
            time.sleep(0.5)
        self.stop()
        pytest.fail(f"dockerd did not answer within 60 s: {self.log_path.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=45)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


# --------------------------------------------------------------------------------------------
# Load
# --------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    method: str
    path: str
    status: int | None  # None: no HTTP answer at all
    seconds: float
    error: str = ""


@dataclass
class LoadResult:
    outcomes: list[Outcome] = field(default_factory=list)

    @property
    def sent(self) -> int:
        return len(self.outcomes)

    def failed(self, ok=(200, 201)) -> list[Outcome]:
        return [o for o in self.outcomes if o.status not in ok]

    def answers(self) -> Counter:
        return Counter(f"{o.method} {o.status if o.status is not None else o.error}" for o in self.outcomes)

    def seconds(self, quantile: float) -> float:
        ordered = sorted(o.seconds for o in self.outcomes)
        return ordered[min(len(ordered) - 1, int(quantile * len(ordered)))] if ordered else 0.0

    def summary(self, ok=(200, 201)) -> str:
        return (
            f"{self.sent} sent, {len(self.failed(ok))} failed, answers {dict(sorted(self.answers().items()))}, "
            f"p50 {self.seconds(0.5):.3f} s, p99 {self.seconds(0.99):.3f} s, slowest {self.seconds(1.0):.2f} s"
        )


def request(base: str, method: str, path: str, body: dict | None = None, timeout: float = 15) -> Outcome:
    host = base.removeprefix("http://")
    started = time.monotonic()
    connection = HTTPConnection(host, timeout=timeout)
    headers = {"Accept": "application/json"}
    payload = None
    if body is not None:
        payload = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    try:
        connection.request(method, path, body=payload, headers=headers)
        response = connection.getresponse()
        try:
            response.read()
        except (OSError, HTTPException):
            # The status line and headers arrived, the body did not: a response cut short.
            return Outcome(method, path, None, time.monotonic() - started, f"cut after {response.status}")
        return Outcome(method, path, response.status, time.monotonic() - started)
    except (OSError, HTTPException) as exc:
        return Outcome(method, path, None, time.monotonic() - started, type(exc).__name__)
    finally:
        connection.close()


def json_request(base: str, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    host = base.removeprefix("http://")
    connection = HTTPConnection(host, timeout=15)
    try:
        headers = {"Accept": "application/json", "Content-Type": "application/json"}
        connection.request(method, path, body=json.dumps(body).encode() if body is not None else None, headers=headers)
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"null")
    finally:
        connection.close()


def run_load(make_request, *, workers: int, seconds: float, max_requests: int, during=None) -> LoadResult:
    """`workers` threads call make_request(worker, n) -> Outcome until `seconds` pass or `max_requests`
    are sent; `during(elapsed)` runs alongside once (the fault), and its end is waited for too."""
    result = LoadResult()
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds
    counter = iter(range(max_requests))

    def worker(index: int) -> None:
        while time.monotonic() < stop_at:
            with lock:
                n = next(counter, None)
            if n is None:
                return
            outcome = make_request(index, n)
            with lock:
                result.outcomes.append(outcome)

    with ThreadPoolExecutor(max_workers=workers + 1) as pool:
        futures = [pool.submit(worker, i) for i in range(workers)]
        fault = pool.submit(during) if during else None
        for future in futures:
            future.result()
        if fault:
            fault.result()
    return result


def new_user_body(tag: str) -> dict:
    suffix = uuid.uuid4().hex[:12]
    return {"name": f"{tag} {suffix}", "email": f"{tag}-{suffix}@example.com"}


def order_body(user_id: int) -> dict:
    return {"user_id": user_id, "items": [{"sku": "SKU-1", "quantity": random.randint(1, 5), "unit_price": "2.50"}]}
