"""docker-compose.yml for real: user-svc x3 and order-svc x2 behind nginx, Prometheus finding every
replica, the hardening as declared, and faults under a bounded load (all through nginx on loopback)."""

import json
import random
import re
import socket
import threading
import time
import urllib.parse
import urllib.request

import containers_support as cs
import pytest
import yaml

pytestmark = pytest.mark.usefixtures("stack")

# How long the database restart fault keeps PostgreSQL down: more than a request waits for a pooled
# connection (DATABASE_POOL_TIMEOUT, 2 s by default and in docker-compose.yml).
DATABASE_DOWN_SECONDS = 4


@pytest.fixture(scope="module")
def users(stack):
    """Twenty users created through nginx before the faults; their ids."""
    ids = []
    for _ in range(20):
        status, body = cs.json_request(stack.url, "POST", "/users", cs.new_user_body("seed"))
        assert status == 201, body
        ids.append(body["id"])
    return ids


def served(stack, container, prefix):
    """Requests for paths under prefix in a replica's own log: its one access line per request."""
    count = 0
    for line in stack.logs(container).splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("event") == "request_finished" and str(entry.get("path", "")).startswith(prefix):
            count += 1
    return count


def test_users_and_orders_through_nginx_and_every_replica_serves(stack, users, figures):
    before = {c: served(stack, c, "/users") for c in stack.containers("user-svc")}
    before.update({c: served(stack, c, "/orders") for c in stack.containers("order-svc")})
    orders = []
    for user_id in users[:10]:
        status, order = cs.json_request(stack.url, "POST", "/orders", cs.order_body(user_id))
        assert status == 201, order
        orders.append(order)
    for _ in range(3):
        for user_id in users:
            status, user = cs.json_request(stack.url, "GET", f"/users/{user_id}")
            assert status == 200 and user["id"] == user_id
    for order in orders:
        status, read = cs.json_request(stack.url, "GET", f"/orders/{order['id']}")
        assert status == 200 and read == order
    status, listed = cs.json_request(stack.url, "GET", f"/orders?user_id={users[0]}")
    assert status == 200 and [o["id"] for o in listed["results"]] == [orders[0]["id"]]

    per_replica = {}
    for service, path in (("user-svc", "/users"), ("order-svc", "/orders")):
        containers = stack.containers(service)
        assert len(containers) == cs.SCALE[service]
        for container in containers:
            per_replica[container] = served(stack, container, path) - before[container]
    figures(f"stack: requests served per replica (its access log) {per_replica}")
    assert all(count > 0 for count in per_replica.values()), f"a replica served nothing: {per_replica}"


def get_json(url, **headers):
    request = urllib.request.Request(url, headers={"Accept": "application/json", **headers})
    with urllib.request.urlopen(request, timeout=15) as response:
        assert response.status == 200
        return json.load(response)


@pytest.mark.parametrize("resource", ["users", "orders"])
def test_a_next_link_through_nginx_leads_to_the_next_page(stack, users, resource):
    """Followed as a client follows it: the link names nginx's published port (not port 80), and the
    scheme nginx was reached with; a client's own X-Forwarded-Proto is replaced by nginx, never believed."""
    for user_id in users[:3]:
        status, order = cs.json_request(stack.url, "POST", "/orders", cs.order_body(user_id))
        assert status == 201, order
    first = get_json(f"{stack.url}/{resource}?page_size=2", **{"X-Forwarded-Proto": "https"})
    assert first["next"] == f"{stack.url}/{resource}?page=2&page_size=2"
    second = get_json(first["next"])
    assert second["previous"] == f"{stack.url}/{resource}?page_size=2"
    assert len(second["results"]) == 2
    assert {item["id"] for item in first["results"]}.isdisjoint(item["id"] for item in second["results"])


def prometheus_query(stack, promql):
    url = f"{stack.prometheus_url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=10) as response:
        body = json.load(response)
    assert body["status"] == "success", body
    return body["data"]["result"]


def test_prometheus_finds_every_replica_by_dns_and_sees_them_up(stack, figures):
    addresses = {}
    for service in cs.APP_SERVICES:
        for container in stack.containers(service):
            networks = cs.inspect(container)["NetworkSettings"]["Networks"]
            (network,) = networks.values()
            addresses[f"{network['IPAddress']}:8000"] = service
    deadline = time.monotonic() + 45
    up = {}
    while time.monotonic() < deadline:
        result = prometheus_query(stack, 'up{job=~"user-svc|order-svc"}')
        up = {r["metric"]["instance"]: (r["metric"]["job"], r["value"][1]) for r in result}
        if len(up) == len(addresses) and all(value == "1" for _, value in up.values()):
            break
        time.sleep(1)
    figures(f'prometheus: up{{job=~"user-svc|order-svc"}} -> {sorted(up.items())}')
    assert {instance: job for instance, (job, _) in up.items()} == addresses
    assert all(value == "1" for _, value in up.values()), up
    assert sum(cs.SCALE.values()) == len(up) == 5


def hardened_containers(stack):
    return [c for s in (*cs.APP_SERVICES, "nginx") for c in stack.containers(s)]


def test_hardening_is_applied_as_declared(stack, figures):
    compose = yaml.safe_load(cs.COMPOSE_FILE.read_text())
    for service in (*cs.APP_SERVICES, "nginx"):
        declared = compose["services"][service]
        limits = declared["deploy"]["resources"]["limits"]
        for container in stack.containers(service):
            info = cs.inspect(container)
            host = info["HostConfig"]
            assert info["Config"]["User"] == declared["user"] and not declared["user"].startswith("0")
            assert host["ReadonlyRootfs"] is True
            assert host["CapDrop"] == ["ALL"] and not host["CapAdd"]
            assert host["Privileged"] is False
            assert "no-new-privileges:true" in host["SecurityOpt"]
            assert host["NanoCpus"] == int(float(limits["cpus"]) * 1e9)
            assert host["Memory"] == parse_size(limits["memory"])
            tmpfs = {m["Target"] for m in host.get("Mounts") or [] if m["Type"] == "tmpfs"} | set(
                host.get("Tmpfs") or {}
            )
            assert "/tmp" in tmpfs
            assert info["State"]["Health"]["Status"] == "healthy"
            # What the kernel enforces, seen from inside: the UID, no capability, nothing writable but tmpfs.
            uid = cs.docker("exec", container, "id", "-u").stdout.strip()
            assert uid == declared["user"].split(":")[0]
            status = cs.docker("exec", container, "cat", "/proc/1/status").stdout
            assert re.search(r"^CapEff:\s+0+$", status, re.M), status
            assert cs.docker("exec", container, "touch", "/etc/written", check=False).returncode != 0
            assert cs.docker("exec", container, "touch", "/tmp/written", check=False).returncode == 0
            memory_max = cs.docker("exec", container, "cat", "/sys/fs/cgroup/memory.max", check=False).stdout.strip()
            if memory_max:  # cgroup v2; on v1 the inspect above is what Docker applied
                assert int(memory_max) == parse_size(limits["memory"])
    figures(f"hardening: {len(hardened_containers(stack))} containers checked (uid, read-only, tmpfs, caps, limits)")


def parse_size(text):
    units = {"K": 2**10, "M": 2**20, "G": 2**30}
    match = re.fullmatch(r"(\d+)([KMG])?B?", str(text).upper())
    return int(match.group(1)) * units.get(match.group(2), 1)


def settle(stack, service):
    """Every replica of the service running and healthy again (faults are cleaned up after)."""
    for container in stack.containers(service):
        if not cs.inspect(container)["State"]["Running"]:
            cs.docker("start", container)
        cs.wait_healthy(container)
    time.sleep(3)  # nginx's DNS cache (valid=2s) sees the replica again


def test_docker_kill_of_a_user_replica_during_reads_fails_no_get(stack, users, figures):
    victim = stack.containers("user-svc")[1]

    def read(worker, n):
        if n % 4 == 0:
            return cs.request(stack.url, "GET", "/users?page_size=5")
        return cs.request(stack.url, "GET", f"/users/{random.choice(users)}")

    def kill():
        time.sleep(2)
        cs.docker("kill", victim)

    try:
        result = cs.run_load(read, workers=6, seconds=10, max_requests=3000, during=kill)
    finally:
        # A kill counts as a manual stop (no restart policy); started again, it must boot on the
        # tmpfs mounts it had (their modes are declared: Docker's defaults left them root-only).
        settle(stack, "user-svc")
    figures(f"fault docker kill {victim} during reads: {result.summary()}")
    assert result.sent >= 100, result.summary()
    # The one failure no proxy can hide: the replica killed between writing a response's header and
    # its body (nginx has already passed the header on, so it cannot retry). Seen once in seven runs;
    # everything else in flight on the victim, and everything sent to it afterwards, must succeed.
    cut = [o for o in result.failed() if o.error.startswith("cut after")]
    assert len(cut) <= 1, result.summary()
    assert not [o for o in result.failed() if o not in cut], result.summary()


def test_docker_stop_of_a_replica_during_mixed_load_fails_no_request(stack, users, figures):
    victim = stack.containers("user-svc")[2]

    def mixed(worker, n):
        kind = n % 4
        if kind == 0:
            return cs.request(stack.url, "POST", "/users", cs.new_user_body("stop"))
        if kind == 1:
            return cs.request(stack.url, "POST", "/orders", cs.order_body(random.choice(users)))
        if kind == 2:
            return cs.request(stack.url, "GET", "/orders?page_size=5")
        return cs.request(stack.url, "GET", f"/users/{random.choice(users)}")

    stopped = {}

    def stop():
        time.sleep(2)
        started = time.monotonic()
        cs.docker("stop", "-t", "30", victim)
        stopped["seconds"] = time.monotonic() - started
        stopped["exit"] = cs.inspect(victim)["State"]["ExitCode"]

    try:
        result = cs.run_load(mixed, workers=6, seconds=10, max_requests=3000, during=stop)
    finally:
        settle(stack, "user-svc")
    figures(
        f"fault docker stop {victim} during mixed load: {result.summary()}; "
        f"stop took {stopped.get('seconds', 0):.1f} s, exit code {stopped.get('exit')}"
    )
    assert result.sent >= 100, result.summary()
    assert not result.failed(), result.summary()
    # SIGTERM, not the kill after the grace period: gunicorn exited by itself.
    assert stopped["seconds"] < 25 and stopped["exit"] == 0, stopped


def test_database_restart_loses_nothing_and_answers_503_not_500(stack, users, figures):
    database = stack.containers(cs.DATABASE_SERVICE)[0]
    created = []
    lock = threading.Lock()

    def mixed(worker, n):
        if n % 2 == 0:
            body = cs.new_user_body("dbrestart")
            outcome = cs.request(stack.url, "POST", "/users", body)
            if outcome.status == 201:
                with lock:
                    created.append(body["email"])
            return outcome
        return cs.request(stack.url, "GET", f"/users/{random.choice(users)}")

    def restart():
        # Down for longer than a request waits for a pooled connection (DATABASE_POOL_TIMEOUT, 2 s),
        # so that requests must be answered while it is down. A plain `docker restart` was back
        # within about a second at times: the waiting requests then got their connection and all
        # succeeded, which the services mean to do, but then the outage was not tested.
        time.sleep(1.5)
        cs.docker("stop", "-t", "10", database)
        time.sleep(DATABASE_DOWN_SECONDS)
        cs.docker("start", database)

    try:
        result = cs.run_load(mixed, workers=4, seconds=12, max_requests=2000, during=restart)
    finally:
        cs.wait_healthy(database)
        for service in cs.APP_SERVICES:
            settle(stack, service)
    figures(f"fault docker restart {database}: {result.summary(ok=(200, 201, 503))}")
    statuses = {o.status for o in result.outcomes}
    assert 503 in statuses, f"the restart was not seen at all: {result.summary()}"
    assert statuses <= {200, 201, 503}, result.summary()
    # Nothing stored is lost: the seeded users and every user a 201 was given for.
    for user_id in users:
        status, _ = cs.json_request(stack.url, "GET", f"/users/{user_id}")
        assert status == 200, user_id
    emails = set()
    path = "/users?page_size=100"
    while path:
        status, page = cs.json_request(stack.url, "GET", path)
        assert status == 200
        emails |= {u["email"] for u in page["results"]}
        path = urllib.parse.urlsplit(page["next"])._replace(scheme="", netloc="").geturl() if page["next"] else None
    assert set(created) <= emails, set(created) - emails


def test_slow_clients_at_nginx_do_not_delay_ordinary_requests(stack, users, figures):
    host, port = stack.url.removeprefix("http://").rsplit(":", 1)
    slow = []
    try:
        for i in range(100):
            s = socket.create_connection((host, int(port)), timeout=5)
            # Request line and one header, never the blank line that ends them.
            s.sendall(f"GET /users/{users[0]} HTTP/1.1\r\nHost: slow-{i}\r\n".encode())
            slow.append(s)
        held_since = time.monotonic()
        result = cs.run_load(
            lambda w, n: cs.request(stack.url, "GET", f"/users/{random.choice(users)}", timeout=5),
            workers=4,
            seconds=6,
            max_requests=2000,
        )
        # Trickle one more header line on each: still half-sent, still open.
        for i, s in enumerate(slow):
            s.sendall(f"X-Slow: {i}\r\n".encode())
        still_open = sum(1 for s in slow if _open(s))
        held = time.monotonic() - held_since
    finally:
        for s in slow:
            s.close()
    figures(
        f"fault 100 slow clients (half-sent headers, held {held:.1f} s, {still_open} still open): {result.summary()}"
    )
    assert still_open == 100
    assert result.sent >= 100 and not result.failed(), result.summary()
    # Prompt: without the proxy these would wait until the slow clients went away (or time out at 5 s).
    assert result.seconds(1.0) < 2.0, result.summary()


def _open(sock):
    sock.setblocking(False)
    try:
        return sock.recv(1) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        sock.setblocking(True)
