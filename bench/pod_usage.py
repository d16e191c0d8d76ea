"""CPU and memory of the service containers at rest and under bounded load, for the pods'
requests, limits and HPA target (docs/sizing.md says how the figures became the manifests).

Runs the real images the container suite builds (tools/local_images.py) in docker-compose.yml, the
production shape of a pod (PostgreSQL backend, 2 gunicorn workers, 1 CPU / 512 MiB), and reads each
app container's cgroup: CPU time (cpuacct.usage, or cpu.stat usage_usec on cgroup v2) over a window,
and the working set (memory usage minus inactive file pages, as the kubelet and cAdvisor count it)
sampled every second. Phases, each a fixed length, traffic through nginx as a client would send it:

- ``rest``: no traffic at all (Docker's health checks only);
- ``light``: 2 client threads, each waiting 50 ms between requests;
- ``saturated``: 16 client threads back to back (on a 2-core machine, the machine is the limit).

The request mix is the order service's path: POST /orders (which calls GET /users/<id>), GET /orders
for that user, GET /users/<id>. Bounded in time and count; all traffic goes to loopback.

With ``--mesh`` the same phases run through the Istio data-plane rehearsal instead (mesh_rehearsal/,
what ``./manage_all.sh mesh up`` starts: 2 pods per service, each an app container beside an Envoy
sidecar with captured traffic and mTLS, the ingress gateway in front), and the sidecars' containers
are measured beside the apps': the figures for the pods' ``sidecar.istio.io/proxyCPU`` and
``proxyMemory``. The apps there run the local overlay's one worker, so their own figures come from
the Compose run.

    .venv/bin/python bench/pod_usage.py                 # about 4 minutes
    .venv/bin/python bench/pod_usage.py --seconds 30    # per phase
    .venv/bin/python bench/pod_usage.py --mesh          # the sidecars, through the gateway
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from http.client import HTTPConnection, HTTPException
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import compose_stack  # noqa: E402


class Cgroup:
    """One container's cgroup files (v1 or v2)."""

    def __init__(self, container_id: str):
        v2 = Path("/sys/fs/cgroup/system.slice") / f"docker-{container_id}.scope"
        v1_cpu = Path("/sys/fs/cgroup/cpuacct/docker") / container_id
        v1_memory = Path("/sys/fs/cgroup/memory/docker") / container_id
        if (v2 / "cpu.stat").exists():
            self.version, self.cpu_dir, self.memory_dir = 2, v2, v2
        elif (v1_cpu / "cpuacct.usage").exists():
            self.version, self.cpu_dir, self.memory_dir = 1, v1_cpu, v1_memory
        else:
            raise SystemExit(f"no cgroup files for container {container_id[:12]} (looked in {v2} and {v1_cpu})")

    def cpu_seconds(self) -> float:
        if self.version == 2:
            stat = dict(line.split() for line in (self.cpu_dir / "cpu.stat").read_text().splitlines())
            return int(stat["usage_usec"]) / 1e6
        return int((self.cpu_dir / "cpuacct.usage").read_text()) / 1e9

    def working_set_bytes(self) -> int:
        stat = dict(line.split() for line in (self.memory_dir / "memory.stat").read_text().splitlines())
        if self.version == 2:
            usage = int((self.memory_dir / "memory.current").read_text())
            inactive = int(stat["inactive_file"])
        else:
            usage = int((self.memory_dir / "memory.usage_in_bytes").read_text())
            inactive = int(stat["total_inactive_file"])
        return max(0, usage - inactive)


def sample(groups: dict[str, Cgroup], seconds: float, traffic=None) -> dict:
    """CPU (millicores, averaged over the window) and working set (MiB, median and max of 1 s
    samples) of each container while ``traffic(stop_event)`` runs, if any."""
    stop = threading.Event()
    worker = threading.Thread(target=traffic, args=(stop,)) if traffic else None
    memory: dict[str, list[int]] = {name: [] for name in groups}
    cpu_start = {name: group.cpu_seconds() for name, group in groups.items()}
    started = time.monotonic()
    if worker:
        worker.start()
    while time.monotonic() - started < seconds:
        for name, group in groups.items():
            memory[name].append(group.working_set_bytes())
        time.sleep(1.0)
    elapsed = time.monotonic() - started
    cpu_end = {name: group.cpu_seconds() for name, group in groups.items()}
    stop.set()
    if worker:
        worker.join()
    mib = 1024 * 1024
    return {
        name: {
            "cpu_millicores": round(1000 * (cpu_end[name] - cpu_start[name]) / elapsed),
            "working_set_mib_median": round(statistics.median(memory[name]) / mib),
            "working_set_mib_max": round(max(memory[name]) / mib),
        }
        for name in groups
    }


def send(base: str, method: str, path: str, body: dict | None = None) -> tuple[int | None, object]:
    """One request on a connection of its own, as a client behind nginx would send it: (status, the
    JSON answer), or (None, the error) when no HTTP answer came."""
    connection = HTTPConnection(base.removeprefix("http://"), timeout=15)
    headers = {"Accept": "application/json", "Content-Type": "application/json"}
    try:
        connection.request(method, path, body=json.dumps(body).encode() if body is not None else None, headers=headers)
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"null")
    except (OSError, HTTPException, ValueError) as exc:
        return None, type(exc).__name__
    finally:
        connection.close()


def order_body(user_id: int) -> dict:
    return {"user_id": user_id, "items": [{"sku": "SKU-1", "quantity": random.randint(1, 5), "unit_price": "2.50"}]}


def traffic(url: str, user_ids: list[int], threads: int, pause: float, counts: dict):
    def run(stop: threading.Event) -> None:
        lock = threading.Lock()

        def client(index: int) -> None:
            for n in itertools.count():
                if stop.is_set():
                    return
                user_id = user_ids[(index + n) % len(user_ids)]
                for method, path, body in (
                    ("POST", "/orders", order_body(user_id)),
                    ("GET", f"/orders?user_id={user_id}", None),
                    ("GET", f"/users/{user_id}", None),
                ):
                    status, _ = send(url, method, path, body)
                    with lock:
                        counts[status] = counts.get(status, 0) + 1
                if pause:
                    stop.wait(pause)

        pool = [threading.Thread(target=client, args=(i,)) for i in range(threads)]
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join()

    return run


@contextlib.contextmanager
def compose_pods() -> Iterator[tuple[str, dict[str, list[str]]]]:
    """docker-compose.yml up: (nginx's URL, {service: its containers})."""
    stack = compose_stack.Stack(compose_stack.build_images())
    try:
        stack.up()
        names = {service: stack.containers(service) for service in compose_stack.APP_SERVICES}
        for container in (*itertools.chain(*names.values()), *stack.containers(compose_stack.DATABASE_SERVICE)):
            compose_stack.wait_healthy(container, timeout=120)
        yield stack.url, names
    finally:
        stack.down()


@contextlib.contextmanager
def mesh_pods() -> Iterator[tuple[str, dict[str, list[str]]]]:
    """The mesh rehearsal up: (the gateway's URL, {service and "<service> sidecar": their containers})."""
    from mesh_rehearsal import runtime

    with tempfile.TemporaryDirectory(prefix="pod-usage-mesh-") as directory:
        mesh = runtime.Mesh(Path(directory) / "mesh", runtime.build_images())
        try:
            state = mesh.up(log=lambda line: print(line, file=sys.stderr, flush=True))
            names: dict[str, list[str]] = {}
            for pod in state.pods:
                if pod.app in runtime.APPS:
                    names.setdefault(pod.app, []).append(state.container(pod.name, "app"))
                    names.setdefault(f"{pod.app} sidecar", []).append(state.container(pod.name, "istio-proxy"))
            yield state.gateway_url, names
        finally:
            mesh.down()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0, help="length of each phase (default 60)")
    parser.add_argument("--mesh", action="store_true", help="through the mesh rehearsal, sidecars measured too")
    args = parser.parse_args()

    with mesh_pods() if args.mesh else compose_pods() as (url, names):
        groups = {name: Cgroup(compose_stack.inspect(name)["Id"]) for name in itertools.chain(*names.values())}
        user_ids = []
        for n in range(20):
            user = {"name": f"sizing {n}", "email": f"sizing-{n}@example.com"}
            status, body = send(url, "POST", "/users", user)
            if status != 201 or not isinstance(body, dict):
                raise SystemExit(f"POST /users answered {status}: {body}")
            user_ids.append(body["id"])
        time.sleep(10)  # let the start-up and the first requests settle
        report = {
            "machine_cpus": os.cpu_count(),
            "through": "mesh" if args.mesh else "compose",
            "containers": names,
            "phases": {},
        }
        phases = (
            ("rest", None, {}),
            ("light", 2, {"pause": 0.05}),
            ("saturated", 16, {"pause": 0.0}),
        )
        for phase, threads, options in phases:
            counts: dict = {}
            load = traffic(url, user_ids, threads, options["pause"], counts) if threads else None
            per_container = sample(groups, args.seconds, load)
            report["phases"][phase] = {
                "seconds": args.seconds,
                "client_threads": threads or 0,
                "answers": {str(k): v for k, v in sorted(counts.items(), key=lambda kv: str(kv[0]))},
                "requests_per_second": round(sum(counts.values()) / args.seconds, 1),
                "containers": per_container,
            }
            print(f"{phase}: {json.dumps(report['phases'][phase])}", file=sys.stderr, flush=True)
        print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
