"""/readyz on a real PostgreSQL: it answers from the worker's own readiness connection while every
pooled connection is held by requests blocked on a table lock, and it still fails while the database
is unreachable (svc_common.storage.readiness)."""

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests
import yaml

from testsupport.postgres_server import postgres_env, service_database

POOL_SIZE = 2
BLOCKED_REQUESTS = 6  # more than the pool: the rest wait for a connection, as in a saturated pod
STATEMENT_TIMEOUT = 8.0  # long enough for the blocked requests to hold the pool while we probe
REPO_ROOT = Path(__file__).resolve().parents[2]


def probe_timeout_seconds() -> float:
    """timeoutSeconds of the Deployments' readiness probe: what the kubelet waits for an answer."""
    deployment = yaml.safe_load((REPO_ROOT / "k8s/base/user-svc/deployment.yaml").read_text())
    (app,) = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "app"]
    return float(app["readinessProbe"]["timeoutSeconds"])


def waiting_on_lock(server, database) -> int:
    with server.connect(database) as admin:
        (count,) = admin.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND wait_event_type = 'Lock'", (database,)
        ).fetchone()
    return count


def readyz(url: str) -> tuple[int, float]:
    started = time.monotonic()
    response = requests.get(f"{url}/readyz", timeout=10)
    return response.status_code, time.monotonic() - started


def test_readiness_answers_while_the_pool_is_saturated_and_fails_while_the_database_is_down(start, postgres_server):
    users_db = service_database(postgres_server, "user-svc")
    users = start(
        "user-svc",
        **postgres_env(
            users_db,
            workers=1,
            DATABASE_POOL_SIZE=POOL_SIZE,
            DATABASE_POOL_TIMEOUT=STATEMENT_TIMEOUT,
            DATABASE_STATEMENT_TIMEOUT=STATEMENT_TIMEOUT,
        ),
    )
    assert readyz(users.url)[0] == 200
    probe_timeout = probe_timeout_seconds()

    with users_db.connect() as blocker, ThreadPoolExecutor(BLOCKED_REQUESTS) as pool:
        blocker.autocommit = False
        blocker.execute("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
        blocked = [
            pool.submit(requests.get, f"{users.url}/users", timeout=STATEMENT_TIMEOUT + 10)
            for _ in range(BLOCKED_REQUESTS)
        ]
        # The whole pool is lent to requests waiting on the lock; the rest wait for the pool.
        deadline = time.monotonic() + 5
        while waiting_on_lock(postgres_server, users_db.name) < POOL_SIZE and time.monotonic() < deadline:
            time.sleep(0.05)
        assert waiting_on_lock(postgres_server, users_db.name) == POOL_SIZE
        answers = [readyz(users.url) for _ in range(3)]
        assert [status for status, _ in answers] == [200, 200, 200], answers
        assert max(seconds for _, seconds in answers) < probe_timeout, answers
        assert not any(f.done() for f in blocked), "the requests were not holding the pool while we probed"
        blocker.rollback()
        statuses = [f.result().status_code for f in blocked]

    assert set(statuses) <= {200, 503}, statuses  # the blocked requests end one way or the other, never 500

    # The database goes away: readiness says so, within the probe's timeout, and recovers with it.
    postgres_server.stop()
    try:
        status, seconds = readyz(users.url)
        assert status == 503
        assert seconds < probe_timeout + 1.0  # a new connection may spend libpq's connect_timeout (2 s)
    finally:
        postgres_server.start()
    deadline = time.monotonic() + 10
    while readyz(users.url)[0] != 200:
        assert time.monotonic() < deadline, "not ready again after the database came back"
        time.sleep(0.2)
