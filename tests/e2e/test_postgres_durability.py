"""What PostgreSQL keeps when it fails, seen through HTTP: writes under load while the server is killed
with SIGKILL (every acknowledged write is there after crash recovery), and while a primary is killed
and its synchronous standby promoted (the services find the new primary by themselves through libpq's
multi-host URL with target_session_attrs=read-write; every acknowledged write is on it; the switch
answers 503, never 500; clients retrying with their Idempotency-Key end with exactly one entity each).

Each test prints its figures (run with -s to see them)."""

import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import requests

from testsupport.observability import access_lines
from testsupport.postgres_server import postgres_env, promote, service_database, start_standby
from testsupport.services import start_service

WRITERS = 8
STATEMENT_TIMEOUT = 1.0
# Primary killed to standby promoted: more than DATABASE_POOL_TIMEOUT (2 s), a request's wait for a connection.
FAILOVER_GAP_SECONDS = 3.0


class Load:
    """Writer threads creating users until stopped; each create is retried with its own
    Idempotency-Key on 503 or a lost connection until it is answered 201 (or the test gives up)."""

    def __init__(self, urls: list[str], retry: bool) -> None:
        self.urls, self.retry = urls, retry
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.statuses: Counter = Counter()
        self.acknowledged: list[dict] = []  # bodies answered 201
        self.keys: dict[str, str] = {}  # Idempotency-Key -> email of every create attempted

    def run(self, writer: int) -> None:
        with requests.Session() as session:
            n = 0
            while not self.stop.is_set():
                n += 1
                key = str(uuid.uuid4())
                body = {"name": f"W{writer}-{n}", "email": f"w{writer}-{n}@example.com"}
                with self.lock:
                    self.keys[key] = body["email"]
                attempt = 0
                while True:
                    url = self.urls[(writer + attempt) % len(self.urls)]
                    attempt += 1
                    try:
                        response = session.post(f"{url}/users", json=body, headers={"Idempotency-Key": key}, timeout=10)
                        status = response.status_code
                    except requests.ConnectionError:
                        status = "connection error"
                    with self.lock:
                        self.statuses[status] += 1
                        if status == 201:
                            self.acknowledged.append(response.json())
                    if status == 201 or not self.retry or self.stop.is_set():
                        break
                    time.sleep(0.05)

    def acknowledged_count(self) -> int:
        with self.lock:
            return len(self.acknowledged)


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def assert_no_500(*services) -> None:
    for service in services:
        records = service.log_records()
        statuses = Counter(r["status"] for r in access_lines(records))
        assert statuses and 500 not in statuses, statuses
        assert not [r for r in records if r.get("event") == "unhandled_exception"]


def test_every_acknowledged_write_survives_kill_9_of_the_server(start, postgres_server):
    users_db = service_database(postgres_server, "user-svc")
    env = postgres_env(users_db, DATABASE_STATEMENT_TIMEOUT=STATEMENT_TIMEOUT)
    a, b = start("user-svc", **env), start("user-svc", **env)
    load = Load([a.url, b.url], retry=False)
    started = time.monotonic()
    with ThreadPoolExecutor(WRITERS) as pool:
        for writer in range(WRITERS):
            pool.submit(load.run, writer)
        wait_for(lambda: load.acknowledged_count() >= 100, 30, "100 writes were never acknowledged")
        loaded_for = time.monotonic() - started
        postgres_server.kill()
        killed_after = load.acknowledged_count()
        time.sleep(0.5)  # writes meet the dead server
        load.stop.set()
    acknowledged = {user["id"]: user for user in load.acknowledged}
    assert len(acknowledged) == len(load.acknowledged)  # no id handed out twice

    postgres_server.start()  # crash recovery replays the WAL
    with users_db.connect() as conn:
        stored = {
            row[0]: {"id": row[0], "name": row[1], "email": row[2]}
            for row in conn.execute("SELECT id, name, email FROM users")
        }
    missing = [user for user_id, user in acknowledged.items() if stored.get(user_id) != user]
    print(
        f"\nkill -9: {len(acknowledged)} writes acknowledged ({killed_after} before the kill, in {loaded_for:.1f}s), "
        f"{len(acknowledged) - len(missing)} found after restart; answers {dict(load.statuses)}"
    )
    assert not missing, f"{len(missing)} acknowledged writes lost, e.g. {missing[:3]}"
    assert load.statuses[503] > 0  # the writers did meet the dead server

    # The services reconnect by themselves, and serve everything that was acknowledged.
    with requests.Session() as session:
        wait_for(lambda: session.get(f"{a.url}/readyz", timeout=5).status_code == 200, 10, "a not ready again")
        for user in list(acknowledged.values())[:: max(1, len(acknowledged) // 20)]:
            assert session.get(f"{b.url}/users/{user['id']}", timeout=5).json() == user
        assert session.get(f"{a.url}/users", timeout=5).json()["count"] == len(stored)
        created = session.post(f"{a.url}/users", json={"name": "After", "email": "after@example.com"}, timeout=5)
        assert created.status_code == 201 and created.json()["id"] > max(stored)
    assert_no_500(a, b)


def test_a_service_pointed_at_a_standby_reads_but_answers_writes_and_readiness_503(start, postgres_server, tmp_path):
    """A node that no longer takes writes (a standby, or a demoted primary that a persistent connection
    still points at): reads are served, writes are 503 and never 500, and readiness says so."""
    users_db = service_database(postgres_server, "user-svc")
    with requests.Session() as session:
        primary = start("user-svc", **postgres_env(users_db, workers=1))
        ada = session.post(f"{primary.url}/users", json={"name": "Ada", "email": "ada@example.com"}, timeout=10)
        assert ada.status_code == 201
        standby = start_standby(postgres_server)
        try:
            # No target_session_attrs: libpq takes the standby as it is.
            env = {"REPOSITORY_BACKEND": "postgres", "DATABASE_URL": users_db.url(standby), "GUNICORN_WORKERS": "1"}
            on_standby = start_service("user-svc", tmp_path, env=env, ready_path="/healthz")
            try:
                check_standby_answers(session, on_standby, ada.json())
            finally:
                on_standby.stop()
        finally:
            standby.cleanup()
            with postgres_server.connect() as conn:  # no standby to wait for in the next test
                conn.execute("ALTER SYSTEM RESET synchronous_standby_names")
                conn.execute("SELECT pg_reload_conf()")


def check_standby_answers(session, on_standby, ada):
    assert session.get(f"{on_standby.url}/users/{ada['id']}", timeout=10).json() == ada
    refused = session.post(f"{on_standby.url}/users", json={"name": "B", "email": "b@example.com"}, timeout=10)
    assert refused.status_code == 503 and refused.headers["Content-Type"] == "application/json"
    ready = session.get(f"{on_standby.url}/readyz", timeout=10)
    assert ready.status_code == 503 and ready.json()["status"] == "unavailable"
    assert_no_500(on_standby)


def test_failover_to_the_promoted_synchronous_standby(start, postgres_server):
    primary = postgres_server
    users_db = service_database(primary, "user-svc")
    standby = start_standby(primary)
    try:
        # Both nodes in one URL; libpq connects to the first that takes writes.
        env = postgres_env(users_db, primary, standby, DATABASE_STATEMENT_TIMEOUT=STATEMENT_TIMEOUT)
        a, b = start("user-svc", **env), start("user-svc", **env)
        load = Load([a.url, b.url], retry=True)
        with ThreadPoolExecutor(WRITERS) as pool:
            for writer in range(WRITERS):
                pool.submit(load.run, writer)
            wait_for(lambda: load.acknowledged_count() >= 60, 30, "60 writes were never acknowledged")
            primary.kill()
            before_switch = load.acknowledged_count()
            killed_at = time.monotonic()
            # Writes meet the dead primary and the read-only standby for longer than a request waits
            # for a pooled connection: promoted sooner, waiting requests could get the new primary
            # and all succeed, and the switch would go unseen.
            time.sleep(FAILOVER_GAP_SECONDS)
            promote(standby)
            wait_for(lambda: load.acknowledged_count() >= before_switch + 60, 30, "no writes after the promotion")
            recovered_in = time.monotonic() - killed_at
            load.stop.set()
        # Some attempts may still be in flight when stop is set; they end within their timeout above.

        acknowledged = {user["id"]: user for user in load.acknowledged}
        with users_db.connect(standby) as conn:
            stored = {
                row[0]: {"id": row[0], "name": row[1], "email": row[2]}
                for row in conn.execute("SELECT id, name, email FROM users")
            }
            keys = dict(conn.execute("SELECT key, entity_id FROM users_idempotency_keys").fetchall())
        on_new_primary = [user for user_id, user in acknowledged.items() if stored.get(user_id) == user]
        print(
            f"\nfailover: {len(acknowledged)} writes acknowledged ({before_switch} before the kill), "
            f"{len(on_new_primary)} on the new primary; writes again {recovered_in:.1f}s after the kill; "
            f"answers {dict(load.statuses)}"
        )
        assert len(on_new_primary) == len(acknowledged), "acknowledged writes missing on the new primary"
        assert set(load.statuses) <= {201, 503}, load.statuses
        assert load.statuses[503] > 0  # the switch was seen
        # Exactly one entity per client create: by email (unique anyway), and by key.
        emails = Counter(user["email"] for user in stored.values())
        assert max(emails.values()) == 1
        for user in load.acknowledged:
            matching = [key for key, email in load.keys.items() if email == user["email"]]
            assert len(matching) == 1 and keys[matching[0]] == user["id"]
        assert len(load.acknowledged) == len(acknowledged)  # every create answered 201 once
        assert_no_500(a, b)
    finally:
        standby.cleanup()
