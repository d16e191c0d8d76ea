"""Real PostgreSQL servers for tests: Debian's ``postgresql`` package, on free loopback ports, in
temporary data directories, with passwords made up at run time.

initdb and postgres refuse to run as root, so under root (CI, containers) they run as the ``postgres``
account the package creates. The server runs in a process group of its own, so that ``kill()`` is a
real crash of every server process (``kill -9``) and ``pause()`` freezes all of them (a hung server
whose kernel still acknowledges packets). Backends leave the postmaster's process group (setsid), so
they are found as its children, with the postmaster stopped first so that it forks no new ones.

``start_primary_and_standby`` adds a streaming-replication standby, synchronous, so that a commit
is acknowledged only once the standby has flushed it too.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import psycopg

from testsupport.services import free_port


class PostgresMissing(RuntimeError):
    pass


def postgres_bin_dir() -> Path:
    """Debian keeps the server binaries out of PATH, under /usr/lib/postgresql/<version>/bin."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=lambda p: int(Path(p).parts[4]))
    if not found:
        raise PostgresMissing("PostgreSQL is not installed; run tools/setup-test-deps.sh (apt package postgresql)")
    return Path(found[-1]).parent


def _run_as() -> dict:
    """Popen's user/group: the postgres account when we are root, nobody else's otherwise."""
    if os.geteuid() != 0:
        return {}
    account = pwd.getpwnam("postgres")
    return {"user": account.pw_uid, "group": account.pw_gid}


def _owned_tempdir(prefix: str) -> Path:
    """pytest's temp directories are private to root; the server's own must belong to its account."""
    directory = Path(tempfile.mkdtemp(prefix=prefix))
    run_as = _run_as()
    if run_as:
        os.chown(directory, run_as["user"], run_as["group"])
    return directory


@dataclass
class Database:
    """A database and the role that owns it, as a service would be given them."""

    server: PostgresServer
    name: str
    role: str
    password: str

    def url(self, *servers: PostgresServer, **params: str) -> str:
        """A libpq URL over ``servers`` (this one by default), libpq's multi-host form for several."""
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in (servers or (self.server,)))
        query = "&".join(f"{k}={quote(v)}" for k, v in params.items())
        return f"postgresql://{self.role}:{quote(self.password, safe='')}@{hosts}/{self.name}" + (
            f"?{query}" if query else ""
        )

    def connect(self, server: PostgresServer | None = None) -> psycopg.Connection:
        return (server or self.server).connect(self.name)


@dataclass
class PostgresServer:
    port: int
    data_dir: Path
    password: str
    process: subprocess.Popen | None = None
    extra_settings: dict[str, str] = field(default_factory=dict)
    templates: dict[str, Database] = field(default_factory=dict)  # service -> migrated template

    @property
    def log_path(self) -> Path:
        return self.data_dir / "server.log"

    def connect(self, dbname: str = "postgres", timeout: float = 3) -> psycopg.Connection:
        """A superuser connection, autocommit."""
        return psycopg.connect(
            host="127.0.0.1",
            port=self.port,
            user="postgres",
            password=self.password,
            dbname=dbname,
            connect_timeout=max(2, int(timeout)),
            autocommit=True,
        )

    def create_database(self, name: str) -> Database:
        """A database owned by a role of the same name, which has no other rights."""
        password = secrets.token_urlsafe(18)
        with self.connect() as conn:
            conn.execute(f'CREATE ROLE "{name}" LOGIN PASSWORD {_literal(password)}')
            conn.execute(f'CREATE DATABASE "{name}" OWNER "{name}"')
        return Database(self, name, name, password)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout: float = 20) -> PostgresServer:
        settings = {
            "port": str(self.port),
            "listen_addresses": "127.0.0.1",
            "unix_socket_directories": str(self.data_dir),
            "max_connections": "200",
            "shared_buffers": "32MB",
            "wal_level": "replica",
            "max_wal_senders": "5",
            "fsync": "on",
            "synchronous_commit": "on",
            "log_min_messages": "warning",
            **self.extra_settings,
        }
        command = [str(postgres_bin_dir() / "postgres"), "-D", str(self.data_dir)]
        for name, value in settings.items():
            command += ["-c", f"{name}={value}"]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, **_run_as()
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"postgres exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                with self.connect(timeout=2) as conn:
                    conn.execute("SELECT 1")
                return self
            except psycopg.OperationalError:  # not listening yet, or still recovering
                if time.monotonic() > deadline:
                    self.kill()
                    raise RuntimeError(
                        f"postgres on port {self.port} not ready in {timeout}s:\n{self.log_tail()}"
                    ) from None
                time.sleep(0.05)

    def stop(self, timeout: float = 10) -> None:
        """Fast shutdown (SIGINT: roll back sessions, checkpoint, exit); SIGKILL if it takes too long."""
        if not self.running:
            return
        self.resume()  # in case a test paused it
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """``kill -9`` every process of the server: a crash, with no shutdown checkpoint."""
        if self.process is None or self.process.poll() is not None:
            return
        self._signal_all(signal.SIGKILL)
        self.process.wait()

    def pause(self) -> None:
        self._signal_all(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal_all(signal.SIGCONT)

    def _signal_all(self, sig: int) -> None:
        postmaster = self.process.pid
        with contextlib.suppress(ProcessLookupError):
            os.kill(postmaster, signal.SIGSTOP)  # no new children while they are signalled
            for pid in _children(postmaster):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            os.kill(postmaster, sig)
            if sig != signal.SIGSTOP:
                os.kill(postmaster, signal.SIGCONT)

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.data_dir.parent, ignore_errors=True)  # the temporary directory made for it


def _children(parent: int) -> list[int]:
    children = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...; comm may hold spaces and parentheses, so split after the last ")".
        if int(stat.rsplit(")", 1)[1].split()[1]) == parent:
            children.append(int(entry))
    return children


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _initdb(data_dir: Path, password: str) -> None:
    pwfile = data_dir.parent / f"{data_dir.name}.pw"
    pwfile.write_text(password + "\n")
    run_as = _run_as()
    if run_as:
        os.chown(pwfile, run_as["user"], run_as["group"])
    try:
        subprocess.run(
            [
                str(postgres_bin_dir() / "initdb"),
                "-D",
                str(data_dir),
                "-U",
                "postgres",
                f"--pwfile={pwfile}",
                "--auth=scram-sha-256",
                "--encoding=UTF8",
                "--locale=C.UTF-8",
                "--no-sync",  # initdb's own files only; the server fsyncs everything it writes
            ],
            check=True,
            capture_output=True,
            **run_as,
        )
    finally:
        pwfile.unlink()
    with open(data_dir / "pg_hba.conf", "a") as hba:
        hba.write("host replication postgres 127.0.0.1/32 scram-sha-256\n")


def start_postgres(attempts: int = 3, port: int | None = None, **extra_settings: str) -> PostgresServer:
    """A fresh server on a free loopback port (or on ``port``, in a network namespace of the caller's
    where that port is known to be free); ``cleanup()`` stops it and deletes its data."""
    postgres_bin_dir()
    root = _owned_tempdir("pg-")
    data_dir = root / "data"
    password = secrets.token_urlsafe(18)
    data_dir.mkdir(mode=0o700)
    run_as = _run_as()
    if run_as:
        os.chown(data_dir, run_as["user"], run_as["group"])
    _initdb(data_dir, password)
    for attempt in range(attempts):
        server = PostgresServer(port or free_port(), data_dir, password, extra_settings=dict(extra_settings))
        try:
            return server.start()
        except RuntimeError:
            if attempt == attempts - 1:
                shutil.rmtree(root, ignore_errors=True)
                raise
    raise AssertionError("unreachable")


def start_standby(primary: PostgresServer, name: str = "standby1") -> PostgresServer:
    """A streaming-replication standby of ``primary`` (hot standby: it answers reads, refuses writes),
    then made synchronous: from here on a commit on the primary waits for this standby's flush."""
    root = _owned_tempdir("pg-standby-")
    data_dir = root / "data"
    run_as = _run_as()
    subprocess.run(
        [
            str(postgres_bin_dir() / "pg_basebackup"),
            "-h",
            "127.0.0.1",
            "-p",
            str(primary.port),
            "-U",
            "postgres",
            "-D",
            str(data_dir),
            "-X",
            "stream",
            "--checkpoint=fast",  # the default spreads the starting checkpoint over minutes
            "--no-sync",
        ],
        check=True,
        capture_output=True,
        env={**os.environ, "PGPASSWORD": primary.password},
        **run_as,
    )
    conninfo = f"host=127.0.0.1 port={primary.port} user=postgres password={primary.password} application_name={name}"
    with open(data_dir / "postgresql.auto.conf", "a") as conf:
        conf.write(f"primary_conninfo = {_literal(conninfo)}\n")
    (data_dir / "standby.signal").touch()
    if run_as:
        for path in (data_dir / "postgresql.auto.conf", data_dir / "standby.signal"):
            os.chown(path, run_as["user"], run_as["group"])
    standby = None
    for attempt in range(3):
        standby = PostgresServer(free_port(), data_dir, primary.password, extra_settings={"hot_standby": "on"})
        try:
            standby.start()
            break
        except RuntimeError:
            if attempt == 2:
                raise
    assert standby is not None
    with primary.connect() as conn:
        conn.execute(f"ALTER SYSTEM SET synchronous_standby_names = {_literal(name)}")
        conn.execute("SELECT pg_reload_conf()")
        deadline = time.monotonic() + 10
        while conn.execute(
            "SELECT sync_state FROM pg_stat_replication WHERE application_name = %s", [name]
        ).fetchone() != ("sync",):
            assert time.monotonic() < deadline, f"standby {name} never became synchronous:\n{standby.log_tail()}"
            time.sleep(0.05)
    return standby


def promote(standby: PostgresServer, timeout: float = 10) -> None:
    with standby.connect() as conn:
        assert conn.execute("SELECT pg_promote(true, %s)", [int(timeout)]).fetchone() == (True,)


def migrate(database_url: str, service: str) -> None:
    """``manage.py migrate`` of a service against ``database_url``, as manage_all.sh runs it."""
    from testsupport.services import PROJECTS, ROOT

    directory, _ = PROJECTS[service]
    result = subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"],
        cwd=ROOT / directory,
        env={
            **os.environ,
            "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / directory}",
            "DJANGO_SECRET_KEY": "test-only-not-a-secret",
            "REPOSITORY_BACKEND": "postgres",
            "DATABASE_URL": database_url,
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, f"migrate {service} failed:\n{result.stdout}\n{result.stderr}"


def service_database(server: PostgresServer, service: str) -> Database:
    """A new, migrated database for ``service`` on ``server``, owned by the service's role.

    The first one per server and service is migrated with ``manage.py migrate`` and then kept as a
    template that the next ones copy (CREATE DATABASE ... TEMPLATE): a copy takes a fraction of the
    time of a Django start-up and migration."""
    role = service.replace("-", "_")
    template = server.templates.get(service)
    if template is None:
        template = server.create_database(f"{role}_template")
        migrate(template.url(), service)
        server.templates[service] = template
    name = f"{role}_{secrets.token_hex(4)}"
    with server.connect() as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template.name}" OWNER "{template.role}"')
    return Database(server, name, template.role, template.password)


def postgres_env(database: Database, *servers: PostgresServer, workers: int = 2, **extra: object) -> dict:
    """A service's environment for the postgres backend over ``servers`` (the database's own by default)."""
    params = {"target_session_attrs": "read-write"} if len(servers) > 1 else {}
    return {
        "REPOSITORY_BACKEND": "postgres",
        "DATABASE_URL": database.url(*servers, **params),
        "GUNICORN_WORKERS": workers,
        **extra,
    }
