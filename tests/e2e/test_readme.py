"""Every command block of the README a user can run on one machine, run exactly as printed.

- The quick start and every ``console`` block (the curl examples), in README order with one shared
  state, as one user at one terminal: user 1, then orders for it, then the user service killed, the
  503, and so on. The README's fixed ports (127.0.0.1:8001/8002) and ``.run/`` are kept, and never
  collide with anything else on the machine or with tests running alongside (pytest-xdist): the run
  gets a network namespace of its own (only a loopback interface) and a copy of the repository's
  tracked files of its own, whose ``.venv`` presents the project's installed venv (start's pip step
  finds everything installed; the namespace has no network anyway). Each console command runs on a
  terminal (a pty), and what the terminal shows is compared with what the README prints after it,
  with only the variable parts normalised (``testsupport.readme_blocks.OutputMatcher.mismatch``
  lists them: terminal formatting, CR LF, trailing whitespace, the headers the README does not print,
  ``[...]``, created_at timestamps, pids). A status in a command's trailing comment (``# 404``),
  which curl without ``-i`` does not show, is checked against the service's access line.
- The PostgreSQL start block, in a namespace and copy of its own (it is the other way to start, not a
  step after the quick start: there a second ``start`` would find the services running): a real
  PostgreSQL listens there on the README's 127.0.0.1:5432, with the roles and databases the block's
  URLs name and their password literally ``PASSWORD`` (nothing outside the namespace can reach it).
- The Docker Compose block of the Deployment section, verbatim: ``-p meshed`` and nginx on
  127.0.0.1:8080 (Prometheus on 9090). Docker publishes ports from its own namespace, so a namespace of
  ours cannot isolate them; instead the test takes a machine-wide lock (two runs of this test never
  overlap), checks that 8080 and 9090 are free and that no project ``meshed`` exists (a user's own
  stack, with its volume, is never touched: the test fails and says so), and ends with
  ``docker-compose -p meshed down -v``.

Blocks that cannot run here carry ``<!-- not run by tests: reason -->`` just above them; any other
shell block the tests do not run fails ``test_every_command_block_is_run_or_excluded``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pty
import re
import select
import shlex
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from testsupport.readme_blocks import (
    PROSE_LANGUAGES,
    SHELL_LANGUAGES,
    Block,
    OutputMatcher,
    blocks,
    console_commands,
    shell_commands,
)
from testsupport.services import ROOT

README = ROOT / "README.md"
# What a user's fresh shell has; nothing of the test runner's environment (a DJANGO_SECRET_KEY or
# REPOSITORY_BACKEND set for the suite, pytest-xdist's variables) reaches the commands.
USER_ENV = {
    "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
    "HOME": os.environ.get("HOME", "/root"),
    "LANG": "C.UTF-8",
    **({"DOCKER_HOST": os.environ["DOCKER_HOST"]} if "DOCKER_HOST" in os.environ else {}),
}
COMMAND_TIMEOUT = 60  # s, one curl or kill (the slowest answer the README shows is a 503 within 3 s)
START_TIMEOUT = 180  # s, ./manage_all.sh start (it gives up on its own after 30 s per service)
COMPOSE_TIMEOUT = 900  # s, the whole Compose block, images built from Debian the first time included
COMPOSE_PORTS = (8080, 9090)  # nginx and Prometheus, as docker-compose.yml publishes them by default


def readme() -> list[Block]:
    return blocks(README.read_text())


# --- which test runs which block ------------------------------------------------------------------


def is_quick_start(block: Block) -> bool:
    commands = shell_commands(block) if block.language == "sh" else []
    return bool(commands) and commands[0].text.startswith("./manage_all.sh start ")


def is_postgres_start(block: Block) -> bool:
    return block.language == "sh" and "REPOSITORY_BACKEND=postgres" in block.text


def is_compose(block: Block) -> bool:
    return block.language == "sh" and "docker-compose" in block.text


def is_console(block: Block) -> bool:
    return block.language == "console"


RUNNERS: dict[str, Callable[[Block], bool]] = {
    "quick start": is_quick_start,
    "PostgreSQL start": is_postgres_start,
    "Docker Compose": is_compose,
}


def the_block(runner: str) -> Block:
    found = [b for b in readme() if not b.excluded and RUNNERS[runner](b)]
    assert len(found) == 1, f"the {runner} block: {[b.where() for b in found]}"
    return found[0]


def test_every_command_block_is_run_or_excluded():
    every = readme()
    assert any(is_console(b) for b in every)
    for block in every:
        assert block.language in SHELL_LANGUAGES + PROSE_LANGUAGES, (
            f"{block.where()}: say what the block is: ```sh or ```console (run by this test) or ```text"
        )
        if block.language in PROSE_LANGUAGES or block.excluded:
            continue
        runners = [name for name, claims in RUNNERS.items() if claims(block)] + (["console"] * is_console(block))
        assert len(runners) == 1, (
            f"{block.where()} is run by {runners or 'no test'}: run it in tests/e2e/test_readme.py or mark it "
            "<!-- not run by tests: the reason --> on the line above"
        )
    for runner in RUNNERS:
        the_block(runner)


# --- a machine of one's own: a network namespace and a copy of the repository ----------------------


def run_bounded(argv: list[str], timeout: float, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(argv, timeout=timeout, text=True, stdin=subprocess.DEVNULL, **kwargs)


def copy_repository(destination: Path) -> Path:
    """The repository's tracked files (as they are in the work tree) in ``destination``, and a
    ``.venv`` presenting the project's installed venv: its entries linked, its own directory, so that
    manage_all.sh's install stamp lands in the copy and never in the shared venv."""
    listed = run_bounded(["git", "ls-files", "-z"], 30, cwd=ROOT, capture_output=True, check=True).stdout
    for name in filter(None, listed.split("\0")):
        source, target = ROOT / name, destination / name
        if not source.exists() and not source.is_symlink():
            continue  # deleted in the work tree, not yet committed
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_symlink():
            target.symlink_to(os.readlink(source))
        else:
            shutil.copy2(source, target)
    venv = (ROOT / ".venv").resolve()
    (destination / ".venv").mkdir()
    for entry in venv.iterdir():
        if not entry.name.startswith(".installed-"):
            (destination / ".venv" / entry.name).symlink_to(entry)
    return destination


class PrivateMachine:
    """A copy of the repository in a network namespace of its own, where commands run as a user
    types them: ``bash -c`` in the copy's folder."""

    def __init__(self, tmp_path: Path):
        self.root = copy_repository(tmp_path / "repository")
        self.namespace = f"readme-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        run_bounded(["ip", "netns", "add", self.namespace], 20, check=True)
        self.closed = False
        try:
            run_bounded(["ip", "-n", self.namespace, "link", "set", "lo", "up"], 20, check=True)
        except BaseException:
            self.close()
            raise

    def prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.namespace]

    def run(self, command: str, timeout: float = COMMAND_TIMEOUT) -> subprocess.CompletedProcess:
        """``command`` as printed; stdout and stderr together, as a terminal shows them."""
        return run_bounded(
            [*self.prefix(), "bash", "-c", command],
            timeout,
            cwd=self.root,
            env=USER_ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )

    def run_in_terminal(self, command: str, timeout: float = COMMAND_TIMEOUT) -> tuple[int, str]:
        """``command`` as printed, its output on a terminal, as the README shows it: curl, say, prints
        its progress meter only when its output is not one. (exit status, what the terminal showed)"""
        controller, terminal = pty.openpty()
        try:
            process = subprocess.Popen(
                [*self.prefix(), "bash", "-c", command],
                cwd=self.root,
                env=USER_ENV,
                stdin=subprocess.DEVNULL,
                stdout=terminal,
                stderr=terminal,
            )
        finally:
            os.close(terminal)
        shown = bytearray()
        deadline = time.monotonic() + timeout
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    process.kill()
                    process.wait()
                    raise AssertionError(f"{command!r} still running after {timeout} s; it showed {shown!r}")
                if select.select([controller], [], [], remaining)[0]:
                    try:
                        chunk = os.read(controller, 65536)
                    except OSError:  # EIO: the last writer closed the terminal
                        break
                    if not chunk:
                        break
                    shown += chunk
            return process.wait(timeout=10), shown.decode()
        finally:
            os.close(controller)

    def signalled_by(self, command: str) -> list[int]:
        """The pids a ``kill ...`` command names (its arguments as bash expands them here), else []."""
        words = shlex.split(command, comments=True)
        if not words or words[0] != "kill":
            return []
        expanded = self.run(f"echo {command.removeprefix('kill')}").stdout.split()
        return [int(word) for word in expanded if word.isdigit()]

    def stop_services(self) -> None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.run("./manage_all.sh stop", 60)

    def close(self) -> None:
        """Stop what the commands started (manage_all.sh's own stop, then whatever is left in the
        namespace), delete the namespace. Once: later calls do nothing."""
        if self.closed:
            return
        self.closed = True
        self.stop_services()
        pids = run_bounded(["ip", "netns", "pids", self.namespace], 20, capture_output=True).stdout.split()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
        run_bounded(["ip", "netns", "delete", self.namespace], 20, check=True)


# A README command's trailing "# 404": the status the service answers, which curl without -i does not
# show; the service's access line (its log, in .run/) does.
STATUS_COMMENT = re.compile(r"http://127\.0\.0\.1:(?P<port>800[12])\b.*#\s*(?P<status>[1-5]\d\d)\s*$", re.DOTALL)
SERVICE_ON_PORT = {"8001": "user-svc", "8002": "order-svc"}


def settled_size(log: Path, quiet: float = 0.3, timeout: float = 5) -> int:
    """``log``'s size once it has not grown for ``quiet`` seconds: access lines are written by a thread
    of their own, a moment after the answer, so the previous command's may still be on their way."""
    deadline = time.monotonic() + timeout
    size, since = log.stat().st_size, time.monotonic()
    while time.monotonic() - since < quiet and time.monotonic() < deadline:
        time.sleep(0.05)
        if (now := log.stat().st_size) != size:
            size, since = now, time.monotonic()
    return size


def access_line_statuses(log: Path, offset: int, timeout: float = 5) -> list[int]:
    """The statuses of the access lines ``log`` gained past ``offset``, once they are all written."""
    deadline = time.monotonic() + timeout
    while True:
        end = settled_size(log)
        with open(log, "rb") as lines:
            lines.seek(offset)
            written = [json.loads(line) for line in lines.read(end - offset).splitlines() if line.startswith(b"{")]
        statuses = [entry["status"] for entry in written if entry.get("event") == "request_finished"]
        if statuses or time.monotonic() > deadline:
            return statuses


def exits_within(pid: int, timeout: float) -> bool:
    """Whether process ``pid`` is gone within ``timeout``: exited and reaped. (A zombie still answers
    ``kill -0``, which is how manage_all.sh tells that a service runs; its new parent, PID 1 once
    manage_all.sh has exited, reaps it at once on most machines, and within about 2 s here.)"""
    deadline = time.monotonic() + timeout
    while os.path.exists(f"/proc/{pid}"):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.fixture
def machine(tmp_path) -> Iterator[PrivateMachine]:
    private = PrivateMachine(tmp_path)
    try:
        yield private
    finally:
        private.close()


# --- the quick start and the curl examples ---------------------------------------------------------


def test_quick_start_and_every_console_block(machine):
    quick_start = shell_commands(the_block("quick start"))
    start, *rest = quick_start
    started = machine.run(start.text, START_TIMEOUT)
    assert started.returncode == 0, f"README.md:{start.line} {start.text}\n{started.stdout}"
    # `./manage_all.sh test` runs the whole suite, this test included: it cannot run inside it.
    assert [c.text.split()[:2] for c in rest] == [["./manage_all.sh", "test"]], rest

    matcher = OutputMatcher()
    ran = 0
    for block in filter(is_console, readme()):
        assert not block.excluded, f"{block.where()}: a console block prints real answers; run it"
        for command in console_commands(block):
            signalled = machine.signalled_by(command.text)
            claimed = STATUS_COMMENT.search(command.text)
            log = machine.root / ".run" / f"{SERVICE_ON_PORT[claimed['port']]}.log" if claimed else None
            logged_before = settled_size(log) if log else 0
            status, shown = machine.run_in_terminal(command.text)
            assert status == 0, f"README.md:{command.line} exited {status}:\n{shown}"
            # kill returns once the signal is sent; a user types the next command seconds later,
            # when the process is gone (a service stops within a second, done with what it had
            # accepted): until then a request could still be queued on its listener and served,
            # and `start` would still see the service running.
            for pid in signalled:
                assert exits_within(pid, 30), f"README.md:{command.line}: pid {pid} still there 30 s after kill"
            problem = matcher.mismatch(command.output, shown)
            assert problem is None, f"README.md:{command.line} $ {command.text}\n{problem}"
            if claimed and log:
                answered = access_line_statuses(log, logged_before)
                assert answered == [int(claimed["status"])], (
                    f"README.md:{command.line}: its comment says {claimed['status']}, the service's log {answered}"
                )
            ran += 1
    assert ran >= 20, ran


# --- the PostgreSQL start -------------------------------------------------------------------------

# Run inside the namespace: PostgreSQL on the README's 127.0.0.1:5432 with each service's role and
# database as the block's URLs name them, until the test closes this process's stdin.
POSTGRES_AS_THE_README_NAMES_IT = """
import sys
from testsupport.postgres_server import start_postgres

server = start_postgres(port=5432)
try:
    with server.connect() as conn:
        for service in ("user_svc", "order_svc"):
            conn.execute(f"CREATE ROLE {service} LOGIN PASSWORD 'PASSWORD'")
            conn.execute(f"CREATE DATABASE {service} OWNER {service}")
    print("ready", flush=True)
    sys.stdin.read()
finally:
    server.cleanup()
"""


def test_postgres_start_block(machine):
    block = the_block("PostgreSQL start")
    (command,) = shell_commands(block)
    postgres = subprocess.Popen(
        [*machine.prefix(), str(machine.root / ".venv" / "bin" / "python"), "-c", POSTGRES_AS_THE_README_NAMES_IT],
        cwd=machine.root,
        env={**USER_ENV, "PYTHONPATH": str(machine.root)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert postgres.stdout is not None
        assert select.select([postgres.stdout], [], [], START_TIMEOUT)[0], f"no PostgreSQL in {START_TIMEOUT} s"
        assert postgres.stdout.readline().strip() == "ready", "PostgreSQL did not start (its error is above)"
        result = machine.run(command.text, START_TIMEOUT)
        assert result.returncode == 0, f"README.md:{command.line}\n{result.stdout}"
        # What the block's comment says it does: migrate both databases, then start the services
        # (start waits for both to be ready; two workers would be refused on the in-memory backend).
        assert "Applying users.0001_initial... OK" in result.stdout, result.stdout
        assert "Applying orders.0001_initial... OK" in result.stdout, result.stdout
        assert "ready: user service http://127.0.0.1:8001/users" in result.stdout, result.stdout
    finally:
        machine.stop_services()  # while their database still answers
        assert postgres.stdin is not None
        postgres.stdin.close()  # the helper stops PostgreSQL and deletes its data
        with contextlib.suppress(subprocess.TimeoutExpired):
            postgres.wait(30)
        if postgres.poll() is None:
            postgres.kill()
            postgres.wait()


# --- the Docker Compose block ----------------------------------------------------------------------


@contextlib.contextmanager
def machine_wide_lock(path: Path, timeout: float) -> Iterator[None]:
    with open(path, "w") as lock:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                assert time.monotonic() < deadline, f"{path} held by another run for {timeout:.0f} s"
                time.sleep(1)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def compose_project_leftovers(project: str) -> str:
    label = f"label=com.docker.compose.project={project}"
    found = []
    for kind in (["ps", "-a"], ["volume", "ls"], ["network", "ls"]):
        listed = run_bounded(["docker", *kind, "-q", "--filter", label], 60, capture_output=True, check=True)
        found += listed.stdout.split()
    return " ".join(found)


def test_compose_block(tmp_path):
    block = the_block("Docker Compose")
    assert "-p meshed" in block.text, "the teardown below names the README's project"
    checkout = copy_repository(tmp_path / "repository")
    with machine_wide_lock(Path("/tmp/meshed-readme-compose.lock"), timeout=COMPOSE_TIMEOUT):
        busy = [port for port in COMPOSE_PORTS if not port_is_free(port)]
        assert not busy, f"127.0.0.1:{busy} in use: the README's Compose block publishes there"
        leftovers = compose_project_leftovers("meshed")
        assert not leftovers, (
            f"a Compose project 'meshed' exists ({leftovers}): someone's stack, kept; if it is a leftover of "
            "this test, `docker-compose -p meshed down -v`"
        )
        try:
            result = run_bounded(
                ["bash", "-e", "-c", block.text],
                COMPOSE_TIMEOUT,
                cwd=checkout,
                env=USER_ENV,
                capture_output=True,
            )
            assert result.returncode == 0, f"{block.where()}:\n{result.stdout}\n{result.stderr[-4000:]}"
            # Its only output is the last line's: an empty first page, through nginx.
            assert result.stdout == '{"count":0,"next":null,"previous":null,"results":[]}', result.stdout
        finally:
            # down reads the file too, and the file demands its variables: any value does for down.
            placeholders = dict.fromkeys(
                ("DJANGO_SECRET_KEY", "POSTGRES_PASSWORD", "USER_SVC_DB_PASSWORD", "ORDER_SVC_DB_PASSWORD"), "down"
            )
            down = run_bounded(
                ["docker-compose", "-p", "meshed", "down", "-v"],
                180,
                cwd=checkout,
                env={**USER_ENV, **placeholders},
                capture_output=True,
            )
            assert down.returncode == 0, down.stderr
            assert not compose_project_leftovers("meshed")


# --- the matcher itself ----------------------------------------------------------------------------


def test_output_matcher_normalises_only_the_variable_parts():
    printed = (
        "HTTP/1.1 201 Created\nLocation: /orders/1\n\n"
        '{"id":1,"items":[...],"created_at":"2026-11-26T15:18:31.788877Z"}\n'
    )
    real = (
        "HTTP/1.1 201 Created\r\r\nServer: gunicorn\r\r\n\x1b[1mLocation\x1b[0m: /orders/1\r\r\n\r\r\n"
        '{"id":1,"items":[{"sku":"A"}],"created_at":"2027-01-02T03:04:05.000006Z"}'
    )
    assert OutputMatcher().mismatch(printed, real) is None
    assert OutputMatcher().mismatch(printed, real.replace("201 Created", "200 OK"))
    assert OutputMatcher().mismatch(printed, real.replace("/orders/1", "/orders/2"))
    assert OutputMatcher().mismatch(printed, real.replace("Location", "Content-Location"))
    assert OutputMatcher().mismatch(printed, real.replace('"id":1', '"id":2'))
    assert OutputMatcher().mismatch(printed, real.replace("2027-01-02T03:04:05.000006Z", "yesterday"))
    assert OutputMatcher().mismatch("(pid 12, log .run/a.log)", "(pid 345, log .run/a.log)") is None
    assert OutputMatcher().mismatch("(pid 12, log .run/a.log)", "(pid 345, log .run/b.log)")
    # One timestamp printed twice in the README is one real timestamp, read back twice.
    session = OutputMatcher()
    assert session.mismatch(printed, real) is None
    assert session.mismatch(printed, real.replace("03:04:05", "03:04:06"))


def test_blocks_know_their_language_and_exclusion():
    markdown = "# A\n\n<!-- not run by tests: needs a cluster -->\n```sh\nkubectl get pods\n```\n\n```\nx\n```\n"
    first, second = blocks(markdown)
    assert (first.line, first.language, first.section, first.excluded) == (4, "sh", "A", "needs a cluster")
    assert (second.language, second.excluded) == ("", None)
    (console,) = blocks("```console\n$ echo 'a\n  b' \\\n   c   # note\na\n  b c\n\n$ true\n```\n")
    first_command, second_command = console_commands(console)
    assert first_command.text == "echo 'a\n  b' \\\n   c   # note" and first_command.output == "a\n  b c"
    assert (second_command.line, second_command.text, second_command.output) == (8, "true", "")
