"""./manage_all.sh start/status/logs/stop as a user runs them, on free ports and a private run folder."""

import os
import subprocess
import time
from pathlib import Path

import requests

from testsupport.services import ROOT, free_port


def run(command, env, check=True):
    result = subprocess.run(
        [str(ROOT / "manage_all.sh"), command],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        stdin=subprocess.DEVNULL,
    )
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


def test_start_is_idempotent_and_stop_stops(tmp_path):
    user_port, order_port = free_port(), free_port()
    env = {**os.environ, "RUN_DIR": str(tmp_path), "USER_SVC_PORT": str(user_port), "ORDER_SVC_PORT": str(order_port)}
    try:
        run("start", env)
        pids = {name: (tmp_path / f"{name}.pid").read_text() for name in ("user-svc", "order-svc")}
        second = run("start", env)
        assert "already running" in second.stderr
        assert {name: (tmp_path / f"{name}.pid").read_text() for name in pids} == pids

        user = requests.post(f"http://127.0.0.1:{user_port}/users", json={"name": "A", "email": "a@x.io"}, timeout=5)
        order = requests.post(
            f"http://127.0.0.1:{order_port}/orders",
            timeout=10,
            json={"user_id": user.json()["id"], "items": [{"sku": "S", "quantity": 1, "unit_price": "1.00"}]},
        )
        assert order.status_code == 201, order.text

        status = run("status", env)
        assert "user-svc running" in status.stdout and "order-svc running" in status.stdout
        logs = run("logs", env)
        assert "[user-svc]" in logs.stdout and "[order-svc]" in logs.stdout
    finally:
        run("stop", env, check=False)
    stopped = run("status", env, check=False)
    assert stopped.returncode == 3
    assert "user-svc stopped" in stopped.stdout
    for pid in pids.values():
        assert not os.path.exists(f"/proc/{pid.strip()}")


def test_start_fails_with_log_tail_when_a_port_is_taken(tmp_path):
    import socket

    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        taken = blocker.getsockname()[1]
        env = {**os.environ, "RUN_DIR": str(tmp_path), "USER_SVC_PORT": str(taken), "ORDER_SVC_PORT": str(free_port())}
        result = run("start", env, check=False)
    run("stop", env, check=False)
    assert result.returncode != 0
    assert "user-svc did not become ready" in result.stderr
    # gunicorn's own words, about the port that was taken (the log tail manage_all.sh prints).
    assert f"connection to ('127.0.0.1', {taken}) failed: [Errno 98] Address already in use" in result.stderr


def test_start_on_postgres_migrates_both_databases_and_serves_them(tmp_path, postgres_server):
    users_db = postgres_server.create_database("manage_all_users")
    orders_db = postgres_server.create_database("manage_all_orders")
    user_port, order_port = free_port(), free_port()
    env = {
        **os.environ,
        "RUN_DIR": str(tmp_path),
        "USER_SVC_PORT": str(user_port),
        "ORDER_SVC_PORT": str(order_port),
        "REPOSITORY_BACKEND": "postgres",
        "USER_SVC_DATABASE_URL": users_db.url(),
        "ORDER_SVC_DATABASE_URL": orders_db.url(),
    }
    try:
        started = run("start", env)
        assert "Applying users.0001_initial... OK" in started.stderr
        assert "Applying orders.0001_initial... OK" in started.stderr
        user = requests.post(f"http://127.0.0.1:{user_port}/users", json={"name": "A", "email": "a@x.io"}, timeout=5)
        assert user.status_code == 201, user.text
        order = requests.post(
            f"http://127.0.0.1:{order_port}/orders",
            timeout=10,
            json={"user_id": user.json()["id"], "items": [{"sku": "S", "quantity": 1, "unit_price": "1.00"}]},
        )
        assert order.status_code == 201, order.text

        run("stop", env)
        again = run("start", env)  # the schema is there: nothing to apply, and the data is kept
        assert "No migrations to apply." in again.stderr
        listed = requests.get(f"http://127.0.0.1:{order_port}/orders", timeout=5).json()
        assert listed["results"] == [order.json()]
    finally:
        run("stop", env, check=False)
    with users_db.connect() as conn:  # each service wrote only its own database
        assert conn.execute("SELECT count(*) FROM users").fetchone() == (1,)
        assert conn.execute("SELECT to_regclass('orders')").fetchone() == (None,)


def test_a_stale_pid_file_names_no_running_service_and_stop_signals_nothing(tmp_path):
    """After a reboot (or a crash whose parent never reaped it), the pid file may name another
    program that got the number, or a zombie: neither is the service, and stop must not signal them."""
    stranger = subprocess.Popen(["sleep", "60"])
    zombie = subprocess.Popen(["true"])  # exits at once; not waited for until the end: a zombie
    try:
        deadline = time.monotonic() + 10
        while Path(f"/proc/{zombie.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
            assert time.monotonic() < deadline, "the child never became a zombie"
            time.sleep(0.05)
        (tmp_path / "user-svc.pid").write_text(f"{stranger.pid}\n")
        (tmp_path / "order-svc.pid").write_text(f"{zombie.pid}\n")
        env = {
            **os.environ,
            "RUN_DIR": str(tmp_path),
            "USER_SVC_PORT": str(free_port()),
            "ORDER_SVC_PORT": str(free_port()),
        }
        status = run("status", env, check=False)
        assert status.returncode == 3, status.stdout + status.stderr
        assert "user-svc stopped" in status.stdout and "order-svc stopped" in status.stdout
        run("stop", env)
        assert stranger.poll() is None, "stop signalled a process that is not the service"
    finally:
        stranger.kill()
        stranger.wait()
        zombie.wait()
