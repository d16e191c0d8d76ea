"""Drive the services with wrk and print requests/s and p50/p99 latency per endpoint and variant,
with the ratios to the references measured in the same run.

Every variant runs in the same invocation on the same machine, all of them at once, taking turns under
load (``take_turns``), so the ratios compare like with like.
Our variants run the real services (gunicorn on free loopback ports, the shipped gunicorn config);
the references are what the issue tracker measures us against:

- ``seed``: the design this project replaces, two small Flask apps with a dict each, the order app
  checking the user with a bare ``requests.get`` (no session, no timeout), deployed the way a user
  would (gunicorn gthread, 1 worker x 8 threads, gunicorn's defaults otherwise);
- ``seed-ours``: the same apps under our worker model (svc_common.server.gunicorn_conf), like for like;
- ``floor``: a WSGI callable answering fixed JSON under our worker model: the server's ceiling.

    .venv/bin/python bench/bench.py                       # every variant, 10 s per endpoint
    .venv/bin/python bench/bench.py --variants shipped,seed,floor --duration 5 --connections 256
    .venv/bin/python bench/bench.py --user-url http://127.0.0.1:8001 --order-url http://127.0.0.1:8002
"""

import argparse
import contextlib
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import postgres as bench_postgres  # noqa: E402
from bench.ports import free_port  # noqa: E402

GUNICORN = str(Path(sys.executable).with_name("gunicorn"))
PROJECTS = {  # name -> (folder, WSGI app, settings module of the "bare" variant)
    "user-svc": ("user_svc", "user_service.wsgi:application", "bench.settings.user_bare"),
    "order-svc": ("order_svc", "order_service.wsgi:application", "bench.settings.order_bare"),
}
GET_USER, POST_ORDER = "GET /users/<id>", "POST /orders"

# Our variants: name -> (environment for both services, whether a trace receiver is needed, bare).
# "shipped" is the default configuration (metrics, JSON logs at INFO, tracing without an exporter);
# the others take one piece away, or all of them ("bare"), or add OTLP export of every span ("traced"),
# or of one trace in ten ("traced-10", the SDK's parent-based ratio sampler, as production samples).
# Each is configuration the product supports, except "bare", which runs bench's own settings modules
# (bench/settings/) without the observability middleware.
VARIANTS = {
    "shipped": ({}, False, False),
    "traced": ({"OTEL_TRACES_SAMPLER": "parentbased_always_on"}, True, False),
    "traced-10": ({"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.1"}, True, False),
    "untraced": ({"OTEL_SDK_DISABLED": "true"}, False, False),
    "quiet-logs": ({"LOG_LEVEL": "WARNING"}, False, False),
    "bare": ({"OTEL_SDK_DISABLED": "true", "LOG_LEVEL": "WARNING"}, False, True),
    # Both services on a throwaway local PostgreSQL server (bench/postgres.py), two workers each.
    "postgres": ({"GUNICORN_WORKERS": "2"}, False, False),
}
# The references: how each is served (gunicorn's command-line flags).
SEED_AS_DEPLOYED = ["-k", "gthread", "-w", "1", "--threads", "8"]
OUR_WORKER_MODEL = ["-c", "python:bench.reference.worker_model"]
REFERENCES = {"seed": SEED_AS_DEPLOYED, "seed-ours": OUR_WORKER_MODEL, "floor": OUR_WORKER_MODEL}
# What they serve: the seed's two apps (bench/reference/), and the floor's fixed answer.
SEED_USERS_APP = "bench.reference.seed_users:app"
SEED_ORDERS_APP = "bench.reference.seed_orders:app"
FLOOR_APP = "bench.reference.floor:app"
UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def post_json(url: str, body: object, timeout: float = 10) -> dict[str, object]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def wrk(url: str, duration: int, connections: int, threads: int, script: str | None = None) -> dict[str, object]:
    command = ["wrk", "--latency", f"-d{duration}s", f"-c{connections}", f"-t{threads}", url]
    if script:
        command[1:1] = ["-s", script]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return parse_wrk(output)


def parse_wrk(output: str) -> dict[str, object]:
    def latency(percentile: int) -> float:
        match = re.search(rf"^\s+{percentile}%\s+([\d.]+)(us|ms|s)\s*$", output, re.M)
        assert match, output
        return float(match.group(1)) * UNITS[match.group(2)]

    requests_per_second = re.search(r"Requests/sec:\s+([\d.]+)", output)
    assert requests_per_second, output
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    socket_errors = re.search(r"Socket errors: (.*)", output)
    return {
        "rps": float(requests_per_second.group(1)),
        "p50_ms": latency(50),
        "p99_ms": latency(99),
        "non_2xx": int(errors.group(1)) if errors else 0,
        "socket_errors": socket_errors.group(1) if socket_errors else "",
    }


class Target:
    """One variant's endpoints, ready to be driven: a user to read and an order body to post."""

    def __init__(self, user_url: str, order_url: str | None, workdir: str) -> None:
        user = post_json(f"{user_url}/users", {"name": "Bench", "email": f"bench-{Path(workdir).name}@example.com"})
        user_id = user.get("id", 1)
        self.urls = {GET_USER: (f"{user_url}/users/{user_id}", None)}
        if order_url:
            script = Path(workdir) / "post_order.lua"
            body = json.dumps({"user_id": user_id, "items": [{"sku": "BENCH", "quantity": 2, "unit_price": "9.99"}]})
            headers = 'wrk.headers["Content-Type"] = "application/json"'
            script.write_text(f'wrk.method = "POST"\nwrk.body = {json.dumps(body)}\n{headers}\n')
            self.urls[POST_ORDER] = (f"{order_url}/orders", str(script))

    def measure(self, endpoint: str, duration: int, args: argparse.Namespace) -> dict[str, object]:
        url, script = self.urls[endpoint]
        return wrk(url, duration, args.connections, args.threads, script)


@contextlib.contextmanager
def gunicorn(
    command: list[str],
    cwd: Path,
    env: dict[str, str],
    log_path: Path,
    ready_path: str,
    *,
    launcher: Sequence[str] = (),
    ready_within: float = 30,
    stop_within: float = 10,
) -> Iterator[tuple[str, "subprocess.Popen[bytes]"]]:
    """Run a gunicorn command line (behind ``launcher``, valgrind say) bound to a free loopback port
    until it answers ``ready_path``: (its URL, the master's process) while the block runs."""
    port = free_port()
    full_env = {**os.environ, "BIND": f"127.0.0.1:{port}", **env}
    with open(log_path.with_name(f"{log_path.name}-{port}.log"), "ab") as log:
        process = subprocess.Popen(
            [*launcher, GUNICORN, "-b", f"127.0.0.1:{port}", *command], cwd=cwd, env=full_env, stdout=log, stderr=log
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + ready_within
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{command[-1]} exited with {process.returncode}; see {log.name}")
            # A slow start (under valgrind) answers slowly too: the probe waits in proportion.
            with contextlib.suppress(OSError), urllib.request.urlopen(f"{url}{ready_path}", timeout=ready_within / 30):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{command[-1]} not ready within {ready_within:.0f} s; see {log.name}")
            time.sleep(0.1)
        yield url, process
    finally:
        process.terminate()
        try:
            process.wait(stop_within)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def served(command: list[str], cwd: Path, env: dict[str, str], log_path: Path, ready_path: str) -> Iterator[str]:
    """Run a gunicorn command line bound to a free loopback port until it answers ``ready_path``."""
    with gunicorn(command, cwd, env, log_path, ready_path) as (url, _):
        yield url


def service_command(name: str, env: dict[str, str], bare: bool) -> tuple[list[str], Path, dict[str, str]]:
    """(gunicorn's arguments, working directory, environment) of one of our services with the
    shipped gunicorn configuration."""
    folder, app, bare_settings = PROJECTS[name]
    env = {"PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / folder}", "DJANGO_SECRET_KEY": "bench-only-not-a-secret", **env}
    if bare:
        env["DJANGO_SETTINGS_MODULE"] = bare_settings
    return ["-c", "python:svc_common.server.gunicorn_conf", app], ROOT / folder, env


def reference_command(variant: str, app: str, env: dict[str, str]) -> tuple[list[str], Path, dict[str, str]]:
    """(gunicorn's arguments, working directory, environment) of a reference app (``SEED_USERS_APP``...)
    under the worker model of the reference ``variant``."""
    return [*REFERENCES[variant], app], ROOT, {"PYTHONPATH": str(ROOT), **env}


def service(name: str, workdir: str, env: dict[str, str], bare: bool) -> contextlib.AbstractContextManager[str]:
    """One of our services with the shipped gunicorn configuration."""
    command, cwd, full_env = service_command(name, env, bare)
    return served(command, cwd, full_env, Path(workdir) / name, "/readyz")


class _OtlpSink(http.server.BaseHTTPRequestHandler):
    """Accepts OTLP/HTTP exports and throws them away: the cost measured is the services' own."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.exports += 1
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def otlp_sink() -> Iterator[http.server.ThreadingHTTPServer]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _OtlpSink)
    server.exports = 0
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def services_for(variant: str, workdir: str) -> Iterator[tuple[str, str | None]]:
    """(user URL, order URL or None) of a variant, running until the block ends."""
    if variant in REFERENCES:
        with references_for(variant, workdir) as urls:
            yield urls
        return
    env, needs_receiver, bare = VARIANTS[variant]
    with contextlib.ExitStack() as stack:
        env = dict(env)
        if needs_receiver:
            sink = stack.enter_context(otlp_sink())
            env["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://127.0.0.1:{sink.server_address[1]}"
        databases: dict[str, dict[str, str]] = {}
        if variant == "postgres":
            databases = stack.enter_context(bench_postgres.databases(ROOT, free_port()))
        user_url = stack.enter_context(service("user-svc", workdir, {**env, **databases.get("user-svc", {})}, bare))
        order_env = {**env, **databases.get("order-svc", {}), "USER_SVC_URL": user_url}
        order_url = stack.enter_context(service("order-svc", workdir, order_env, bare))
        yield user_url, order_url
    # The services have stopped, flushing what they still held: "traced" must really have exported.
    if needs_receiver and sink.exports == 0:
        raise RuntimeError(f"{variant}: no span was exported to the OTLP receiver")


@contextlib.contextmanager
def references_for(variant: str, workdir: str) -> Iterator[tuple[str, str | None]]:
    log = Path(workdir) / variant
    if variant == "floor":
        with served(*reference_command(variant, FLOOR_APP, {}), log, "/") as floor_url:
            yield floor_url, None
        return
    with served(*reference_command(variant, SEED_USERS_APP, {}), log, "/readyz") as user_url:
        orders = reference_command(variant, SEED_ORDERS_APP, {"USER_SVC_URL": user_url})
        with served(*orders, log, "/readyz") as order_url:
            yield user_url, order_url


def main() -> None:
    every = [*VARIANTS, *REFERENCES]
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default=",".join(every), help="comma list of: " + ", ".join(every))
    parser.add_argument("--duration", type=int, default=10, help="seconds per endpoint")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="measure every variant this many times, side by side and taking turns, and report each "
        "one's median run (this machine's speed drifts by a fifth within minutes: one pass can flatter a variant)",
    )
    parser.add_argument("--user-url")
    parser.add_argument("--order-url")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed (Debian package 'wrk'; ./manage_all.sh test installs it)")
    unknown = set(args.variants.split(",")) - set(every)
    if unknown:
        sys.exit(f"unknown variants: {', '.join(sorted(unknown))}")

    runs: dict[str, list[dict[str, dict[str, object]]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-") as workdir, contextlib.ExitStack() as running:
        targets: dict[str, Target] = {}
        if args.user_url:
            targets["running"] = Target(args.user_url.rstrip("/"), args.order_url.rstrip("/"), workdir)
        else:
            for variant in args.variants.split(","):
                user_url, order_url = running.enter_context(services_for(variant, workdir))
                targets[variant] = Target(user_url, order_url, tempfile.mkdtemp(dir=workdir))
        take_turns(targets, args, runs)
    results = {variant: median_run(measured) for variant, measured in runs.items()}

    print_table(results, args)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


def take_turns(targets: dict[str, "Target"], args: argparse.Namespace, runs: dict[str, list]) -> None:
    """Every variant runs at once, idle but for the one being measured, and they take turns: per
    round and endpoint each variant in turn, the first one moving down a place each round. This
    machine's speed drifts by a fifth within minutes, so variants measured minutes apart (each
    started, measured and stopped in turn) were compared at different speeds: measured that way,
    shipped GET came out at 0.75x and 1.03x of quiet-logs in two runs minutes apart, and 0.88x in
    both of two runs taking turns a second at a time. Each variant and endpoint is warmed up first,
    unrecorded (a fresh process runs slower until its caches fill)."""
    names = list(targets)
    endpoints = [GET_USER, POST_ORDER]
    for name in names:
        for endpoint in targets[name].urls:
            targets[name].measure(endpoint, min(args.duration, 2), args)
    for round_number in range(max(args.rounds, 1)):
        order = names[round_number % len(names) :] + names[: round_number % len(names)]
        measured: dict[str, dict[str, dict[str, object]]] = {name: {} for name in names}
        for endpoint in endpoints:
            for name in order:
                if endpoint in targets[name].urls:
                    measured[name][endpoint] = targets[name].measure(endpoint, args.duration, args)
        for name in names:
            runs.setdefault(name, []).append(measured[name])


def median_run(runs: list[dict[str, dict[str, object]]]) -> dict[str, dict[str, object]]:
    """Per endpoint, the run with the median throughput (its latencies with it), every run's
    throughput beside it, and the non-2xx answers of all runs."""
    result: dict[str, dict[str, object]] = {}
    for endpoint in runs[0]:
        ordered = sorted((run[endpoint] for run in runs), key=lambda figures: float(figures["rps"]))  # type: ignore[arg-type]
        figures = dict(ordered[(len(ordered) - 1) // 2])
        figures["rps_runs"] = [run[endpoint]["rps"] for run in runs]
        figures["non_2xx"] = sum(int(run[endpoint]["non_2xx"]) for run in runs)  # type: ignore[call-overload]
        result[endpoint] = figures
    return result


def print_table(results: dict[str, dict[str, dict[str, object]]], args: argparse.Namespace) -> None:
    """One line per variant and endpoint, with the ratio of its throughput to each reference that
    was measured in this run (and to bare), and p99 over p50."""
    compared = [name for name in ("seed", "seed-ours", "floor", "bare") if name in results]
    rounds = f", median of {args.rounds} rounds (variants side by side, taking turns)" if args.rounds > 1 else ""
    print(f"wrk: {args.duration}s per endpoint, {args.connections} connections, {args.threads} threads{rounds}")
    header = f"{'variant':<10} {'endpoint':<16} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'p99/p50':>8} {'non-2xx':>8}"
    print(header + "".join(f" {'vs ' + name:>12}" for name in compared))
    for variant, endpoints in results.items():
        for endpoint, figures in endpoints.items():
            line = (
                f"{variant:<10} {endpoint:<16} {figures['rps']:>9.1f} {figures['p50_ms']:>8.2f} "
                f"{figures['p99_ms']:>8.2f} {figures['p99_ms'] / figures['p50_ms']:>8.1f} {figures['non_2xx']:>8}"
            )
            for name in compared:
                reference = results[name].get(endpoint)
                ratio = f"{figures['rps'] / reference['rps']:.2f}x" if reference else "-"
                line += f" {ratio:>12}"
            print(line)


if __name__ == "__main__":
    main()
