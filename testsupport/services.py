"""Start the real services as gunicorn processes on free loopback ports, as manage_all.sh does."""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from bench.ports import free_port

ROOT = Path(__file__).resolve().parents[1]
GUNICORN = Path(sys.executable).with_name("gunicorn")
PROJECTS = {
    "user-svc": ("user_svc", "user_service.wsgi:application"),
    "order-svc": ("order_svc", "order_service.wsgi:application"),
}


def stop_process(process: subprocess.Popen, timeout: float = 10) -> None:
    """SIGTERM, then SIGKILL if ``process`` has not exited within ``timeout`` seconds."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def poll_until(read, predicate, timeout: float, failure, interval: float = 0.05):
    """``read()`` again and again until ``predicate`` holds for what it returns, which is returned;
    past ``timeout`` seconds, AssertionError with the message ``failure(last value read)``."""
    deadline = time.monotonic() + timeout
    while True:
        value = read()
        if predicate(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(failure(value))
        time.sleep(interval)


@dataclass
class RunningService:
    name: str
    port: int
    process: subprocess.Popen
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self, timeout: float = 10) -> None:
        stop_process(self.process, timeout)

    def worker_pids(self) -> list[int]:
        """The gunicorn master's children: its workers."""
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text()
        return [int(pid) for pid in children.split()]

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_records(self) -> list[dict]:
        """Every line the service wrote, parsed; a line that is not JSON fails the caller's test."""
        return [json.loads(line) for line in self.log_text().splitlines() if line.strip()]


def start_service(
    name: str,
    log_dir: Path,
    env: dict | None = None,
    port: int | None = None,
    ready_timeout: float = 30,
    ready_path: str = "/readyz",
) -> RunningService:
    """``ready_path="/healthz"`` for a service whose storage is expected to be unavailable."""
    directory, module = PROJECTS[name]
    port = port or free_port()
    full_env = {
        **os.environ,
        "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / directory}",
        "BIND": f"127.0.0.1:{port}",
        "DJANGO_SECRET_KEY": "test-only-not-a-secret",
        **(env or {}),
    }
    log_path = Path(log_dir) / f"{name}-{port}.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [str(GUNICORN), "-c", "python:svc_common.server.gunicorn_conf", module],
            cwd=ROOT / directory,
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    service = RunningService(name, port, process, log_path)
    wait_ready(service, ready_timeout, ready_path)
    workers = int(full_env.get("GUNICORN_WORKERS") or 1)
    if workers > 1:
        try:
            wait_for_every_worker(service, workers, ready_timeout)
        except AssertionError:
            service.stop()  # the caller never gets it to stop
            raise
    return service


def wait_for_every_worker(service: RunningService, workers: int, timeout: float) -> None:
    """The first answer comes from whichever worker loaded the app first; a test that needs each of
    several workers to take connections waits for all of them to have loaded it (their "Worker
    ready" lines, logged at info)."""

    def ready_lines() -> int:
        return sum('"Worker ready (pid: ' in line for line in service.log_text().splitlines())

    poll_until(
        ready_lines,
        lambda count: count >= workers,
        timeout,
        lambda count: (
            f"{service.name}: {count} of {workers} workers ready within {timeout}s:\n{service.log_text()[-3000:]}"
        ),
    )


def wait_ready(service: RunningService, timeout: float, path: str = "/readyz") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if service.process.poll() is not None:
            raise RuntimeError(
                f"{service.name} exited with {service.process.returncode}:\n{service.log_text()[-3000:]}"
            )
        try:
            with urllib.request.urlopen(f"{service.url}{path}", timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    service.stop()
    raise RuntimeError(f"{service.name} not ready within {timeout}s:\n{service.log_text()[-3000:]}")
