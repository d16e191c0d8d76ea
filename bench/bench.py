"""Drive the services with wrk and print requests/s and p50/p99 latency per endpoint and variant.

Every variant runs in the same invocation on the same machine, so the ratios printed at the end
compare like with like. By default each variant's services are started here (gunicorn on free
loopback ports); with --user-url/--order-url the already-running services are measured instead.

    .venv/bin/python bench/bench.py                       # all variants, 10 s per endpoint
    .venv/bin/python bench/bench.py --variants shipped --duration 5
    .venv/bin/python bench/bench.py --user-url http://127.0.0.1:8001 --order-url http://127.0.0.1:8002
"""

import argparse
import contextlib
import http.server
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROJECTS = {  # name -> (folder, WSGI app, settings module of the "bare" variant)
    "user-svc": ("user_svc", "user_service.wsgi:application", "bench.settings.user_bare"),
    "order-svc": ("order_svc", "order_service.wsgi:application", "bench.settings.order_bare"),
}


# name -> (environment for both services, whether a trace receiver is needed, bare settings or not)
# "shipped" is the default configuration (metrics, JSON logs at INFO, tracing without an exporter);
# the others take one piece away, or all of them ("bare"), or add OTLP export of every span ("traced").
# Every variant is configuration the product supports, except "bare", which runs bench's own settings
# modules (bench/settings/) without the observability middleware.
VARIANTS = {
    "shipped": ({}, False, False),
    "traced": ({"OTEL_TRACES_SAMPLER_ARG": "1.0"}, True, False),
    "untraced": ({"OTEL_SDK_DISABLED": "true"}, False, False),
    "quiet-logs": ({"LOG_LEVEL": "WARNING"}, False, False),
    "bare": ({"OTEL_SDK_DISABLED": "true", "LOG_LEVEL": "WARNING"}, False, True),
}
UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def post_json(url, body):
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def wrk(url, duration, connections, threads, script=None):
    command = ["wrk", "--latency", f"-d{duration}s", f"-c{connections}", f"-t{threads}", url]
    if script:
        command[1:1] = ["-s", script]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return parse_wrk(output)


def parse_wrk(output):
    def latency(percentile):
        match = re.search(rf"^\s+{percentile}%\s+([\d.]+)(us|ms|s)\s*$", output, re.M)
        return float(match.group(1)) * UNITS[match.group(2)]

    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    socket_errors = re.search(r"Socket errors: (.*)", output)
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1)),
        "p50_ms": latency(50),
        "p99_ms": latency(99),
        "non_2xx": int(errors.group(1)) if errors else 0,
        "socket_errors": socket_errors.group(1) if socket_errors else "",
    }


def measure(user_url, order_url, args, workdir):
    user = post_json(f"{user_url}/users", {"name": "Bench", "email": f"bench-{Path(workdir).name}@example.com"})
    script = Path(workdir) / "post_order.lua"
    body = json.dumps({"user_id": user["id"], "items": [{"sku": "BENCH", "quantity": 2, "unit_price": "9.99"}]})
    script.write_text(
        f'wrk.method = "POST"\nwrk.body = {json.dumps(body)}\nwrk.headers["Content-Type"] = "application/json"\n'
    )
    return {
        "GET /users/<id>": wrk(f"{user_url}/users/{user['id']}", args.duration, args.connections, args.threads),
        "POST /orders": wrk(f"{order_url}/orders", args.duration, args.connections, args.threads, str(script)),
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def gunicorn(name: str, workdir: str, env: dict[str, str], bare: bool) -> Iterator[str]:
    """One service under gunicorn with the shipped configuration, on a free loopback port."""
    folder, app, bare_settings = PROJECTS[name]
    port = free_port()
    full_env = {
        **os.environ,
        "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / folder}",
        "BIND": f"127.0.0.1:{port}",
        "DJANGO_SECRET_KEY": "bench-only-not-a-secret",
        **env,
    }
    if bare:
        full_env["DJANGO_SETTINGS_MODULE"] = bare_settings
    with open(Path(workdir) / f"{name}-{port}.log", "ab") as log:
        process = subprocess.Popen(
            [str(Path(sys.executable).with_name("gunicorn")), "-c", "python:svc_common.gunicorn_conf", app],
            cwd=ROOT / folder,
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with {process.returncode}; see {log.name}")
            with contextlib.suppress(OSError), urllib.request.urlopen(f"{url}/readyz", timeout=1):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} not ready within 30 s; see {log.name}")
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class _OtlpSink(http.server.BaseHTTPRequestHandler):
    """Accepts OTLP/HTTP exports and throws them away: the cost measured is the services' own."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.exports += 1  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def otlp_sink() -> Iterator[http.server.ThreadingHTTPServer]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _OtlpSink)
    server.exports = 0  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def services_for(variant: str, workdir: str) -> Iterator[tuple[str, str]]:
    env, needs_receiver, bare = VARIANTS[variant]
    with contextlib.ExitStack() as stack:
        env = dict(env)
        if needs_receiver:
            sink = stack.enter_context(otlp_sink())
            env["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://127.0.0.1:{sink.server_address[1]}"
        user_url = stack.enter_context(gunicorn("user-svc", workdir, env, bare))
        order_url = stack.enter_context(gunicorn("order-svc", workdir, {**env, "USER_SVC_URL": user_url}, bare))
        yield user_url, order_url
    # The services have stopped, flushing what they still held: "traced" must really have exported.
    if needs_receiver and sink.exports == 0:  # type: ignore[attr-defined]
        raise RuntimeError(f"{variant}: no span was exported to the OTLP receiver")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma list of: " + ", ".join(VARIANTS))
    parser.add_argument("--duration", type=int, default=10, help="seconds per endpoint")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--user-url")
    parser.add_argument("--order-url")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed (Debian package 'wrk'; ./manage_all.sh test installs it)")

    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-") as workdir:
        if args.user_url:
            results["running"] = measure(args.user_url.rstrip("/"), args.order_url.rstrip("/"), args, workdir)
        else:
            for variant in args.variants.split(","):
                with services_for(variant, workdir) as (user_url, order_url):
                    results[variant] = measure(user_url, order_url, args, tempfile.mkdtemp(dir=workdir))

    print_table(results, args)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


def print_table(results, args):
    baseline = next(iter(results))
    print(f"wrk: {args.duration}s per endpoint, {args.connections} connections, {args.threads} threads")
    header = f"{'variant':<10} {'endpoint':<16} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'non-2xx':>8}"
    print(f"{header} {'vs ' + baseline:>10}")
    for variant, endpoints in results.items():
        for endpoint, figures in endpoints.items():
            ratio = figures["rps"] / results[baseline][endpoint]["rps"]
            print(
                f"{variant:<10} {endpoint:<16} {figures['rps']:>9.1f} {figures['p50_ms']:>8.2f} "
                f"{figures['p99_ms']:>8.2f} {figures['non_2xx']:>8} {ratio:>9.2f}x"
            )


if __name__ == "__main__":
    main()
