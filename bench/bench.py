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
import json
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from testsupport.services import start_service  # noqa: E402

# name -> (environment for both services, whether a trace receiver is needed)
# "shipped" is the default configuration (metrics, JSON logs at INFO, tracing without an exporter);
# the others take one piece away, or all of them ("bare"), or add OTLP export of every span ("traced").
VARIANTS = {
    "shipped": ({}, False),
    "traced": ({"OTEL_TRACES_SAMPLER_ARG": "1.0"}, True),
    "untraced": ({"OTEL_SDK_DISABLED": "true"}, False),
    "quiet-logs": ({"LOG_LEVEL": "WARNING"}, False),
    "bare": ({"OBSERVABILITY_ENABLED": "false", "LOG_LEVEL": "WARNING"}, False),
    # Both services on a fresh local PostgreSQL server (postgres_databases below), two workers each.
    "postgres": ({"GUNICORN_WORKERS": "2"}, False),
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


def postgres_databases(stack):
    """A PostgreSQL server for the "postgres" variant, stopped and deleted with ``stack``, and each
    service's environment on its own migrated database."""
    from testsupport.postgres_server import postgres_env, service_database, start_postgres

    server = start_postgres()
    stack.callback(server.cleanup)
    return {
        name: {key: str(value) for key, value in postgres_env(service_database(server, name)).items()}
        for name in ("user-svc", "order-svc")
    }


@contextlib.contextmanager
def services_for(variant, workdir):
    env, needs_receiver = VARIANTS[variant]
    with contextlib.ExitStack() as stack:
        env = dict(env)
        if needs_receiver:
            from testsupport.otlp_receiver import OtlpReceiver

            receiver = stack.enter_context(OtlpReceiver())
            env["OTEL_EXPORTER_OTLP_ENDPOINT"] = receiver.url
        databases = postgres_databases(stack) if variant == "postgres" else {}
        user = start_service("user-svc", workdir, env={**databases.get("user-svc", {}), **env})
        stack.callback(user.stop)
        order_env = {**databases.get("order-svc", {}), **env, "USER_SVC_URL": user.url}
        order = start_service("order-svc", workdir, env=order_env)
        stack.callback(order.stop)
        yield user.url, order.url


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
