"""A throwaway PostgreSQL server for bench's ``postgres`` variant: Debian's server in a temporary
directory on a free loopback port, one database and role per service, migrated as manage_all.sh
would. Run as the ``postgres`` account when bench runs as root (initdb refuses root)."""

import contextlib
import glob
import os
import pwd
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

FOLDERS = {"user-svc": "user_svc", "order-svc": "order_svc"}


def _bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(Path(p).parts[4]))
    if not found:
        sys.exit("PostgreSQL is not installed (Debian package 'postgresql'; ./manage_all.sh test installs it)")
    return found[-1]


def _as_postgres() -> dict[str, int]:
    if os.geteuid() != 0:
        return {}
    account = pwd.getpwnam("postgres")
    return {"user": account.pw_uid, "group": account.pw_gid}


@contextlib.contextmanager
def databases(
    root: Path, port: int, server_settings: dict[str, str] | None = None
) -> Iterator[dict[str, dict[str, str]]]:
    """Yield each service's environment on its own migrated database; stop and delete it all after.
    ``server_settings`` are more PostgreSQL settings (``shared_buffers``, ``max_connections``, ...)."""
    workdir = Path(tempfile.mkdtemp(prefix="bench-pg-"))
    data = workdir / "data"
    data.mkdir(mode=0o700)
    run_as = _as_postgres()
    if run_as:
        os.chown(workdir, run_as["user"], run_as["group"])
        os.chown(data, run_as["user"], run_as["group"])
    superuser_password = secrets.token_urlsafe(18)
    password_file = workdir / "password"
    password_file.write_text(superuser_password)
    if run_as:
        os.chown(password_file, run_as["user"], run_as["group"])
    subprocess.run(
        [_bin("initdb"), "-D", str(data), "-U", "postgres", "-A", "scram-sha-256", f"--pwfile={password_file}"],
        check=True,
        capture_output=True,
        **run_as,
    )
    settings = {
        **(server_settings or {}),
        "port": str(port),
        "listen_addresses": "127.0.0.1",
        "unix_socket_directories": str(workdir),
    }
    command = [_bin("postgres"), "-D", str(data), *[f"-c{key}={value}" for key, value in settings.items()]]
    with open(workdir / "server.log", "ab") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, **run_as)
    try:
        import psycopg

        admin = f"postgresql://postgres:{superuser_password}@127.0.0.1:{port}/postgres"
        deadline = time.monotonic() + 30
        while True:
            try:
                connection = psycopg.connect(admin, autocommit=True, connect_timeout=2)
                break
            except psycopg.OperationalError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        environments = {}
        with connection:
            for service, folder in FOLDERS.items():
                password = secrets.token_urlsafe(18)
                connection.execute(f"CREATE ROLE {folder} LOGIN PASSWORD '{password}'")
                connection.execute(f"CREATE DATABASE {folder} OWNER {folder}")
                env = {
                    "REPOSITORY_BACKEND": "postgres",
                    "DATABASE_URL": f"postgresql://{folder}:{password}@127.0.0.1:{port}/{folder}",
                }
                migrate = [sys.executable, "manage.py", "migrate", "--no-input"]
                migrate_env = {**os.environ, **env, "PYTHONPATH": str(root), "DJANGO_SECRET_KEY": "bench"}
                subprocess.run(migrate, cwd=root / folder, env=migrate_env, check=True, capture_output=True)
                environments[service] = env
        yield environments
    finally:
        server.terminate()
        server.wait(30)
        shutil.rmtree(workdir, ignore_errors=True)
