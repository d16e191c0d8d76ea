"""Start a real ``redis-server`` on a free loopback port with its own data directory, for tests.

A missing binary raises (tests fail, they do not skip): ``tools/apt-packages.txt`` lists redis-server.
The server keeps an append-only file and no RDB snapshots, so ``restart()`` on the same directory
and port brings the data back, as a restarted production Redis with AOF would.
"""

import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

from testsupport.services import free_port


class RedisServerMissing(RuntimeError):
    pass


def redis_server_binary() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        raise RedisServerMissing(
            "redis-server is not installed; run tools/setup-test-deps.sh (apt package redis-server)"
        )
    return binary


@dataclass
class RedisServer:
    port: int
    directory: Path
    process: subprocess.Popen | None = None
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_path = self.directory / "redis-server.log"

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def client(self, db: int = 0) -> redis.Redis:
        return redis.Redis(
            host="127.0.0.1", port=self.port, db=db, socket_timeout=2, socket_connect_timeout=2, decode_responses=True
        )

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout: float = 10) -> "RedisServer":
        command = [
            redis_server_binary(),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.directory),
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--daemonize",
            "no",
            "--protected-mode",
            "yes",
            "--logfile",
            "",
        ]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(command, cwd=self.directory, stdout=log, stderr=subprocess.STDOUT)
        self._wait_for_ping(timeout)
        return self

    def _wait_for_ping(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=0.5, socket_connect_timeout=0.5)
        try:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"redis-server exited with {self.process.returncode}:\n{self.log_tail()}")
                try:
                    if client.ping():
                        return
                except redis.exceptions.RedisError:  # not listening yet, or still loading the AOF
                    pass
                time.sleep(0.02)
        finally:
            client.close()
        self.stop()
        raise RuntimeError(
            f"redis-server on port {self.port} did not answer PING within {timeout}s:\n{self.log_tail()}"
        )

    def stop(self, timeout: float = 10) -> None:
        """SIGTERM (Redis flushes the AOF and exits), SIGKILL if that takes too long."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGCONT)  # in case a test paused it
        self.process.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def restart(self) -> "RedisServer":
        self.stop()
        return self.start()

    def pause(self) -> None:
        """SIGSTOP: connections still open, but nothing answers (a hung server)."""
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.process.send_signal(signal.SIGCONT)

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


def start_redis(directory: Path, attempts: int = 3) -> RedisServer:
    """A running server on a free port; retries on a new port if another process took the first."""
    redis_server_binary()
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for attempt in range(attempts):
        server = RedisServer(free_port(), directory)
        try:
            return server.start()
        except RuntimeError:
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")
