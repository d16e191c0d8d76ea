"""Count the CPU instructions each variant spends per request, with valgrind's callgrind.

wrk's figures (bench.py) move by a fifth from run to run on a shared 2-core machine, even with the
variants taking turns; an instruction count does not: the same code counts within a tenth of a
percent from run to run, whatever else the machine is doing. So this is how a change to the request
path is weighed; bench.py says what the server then does with it.

Each count is one variant's service in one process, as a gunicorn worker runs it (gevent patched
first, the shipped settings, its background log writer and span exporter), served requests built the
way gunicorn builds them, straight through the WSGI application: no sockets, no HTTP parsing, which
cost the same in every variant. Only the measured loop is counted (callgrind collects inside
``functools.reduce``, which drives it), after a warm-up. POST /orders runs against a live user
service (gunicorn, shipped configuration) started here, so the order service's call to it is real.
``traced`` exports every span to a sink on loopback (``traced-10`` one trace in ten); its batches
leave only when 512 spans have queued, so the same number of exports fall inside every count.

    .venv/bin/python bench/instructions.py                       # every variant, both endpoints
    .venv/bin/python bench/instructions.py --variants bare,shipped --endpoints get --requests 100
"""

import argparse
import concurrent.futures
import contextlib
import functools
import gc
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench import GET_USER, POST_ORDER, PROJECTS, VARIANTS, otlp_sink, post_json, service  # noqa: E402

ENDPOINTS = {"get": GET_USER, "post": POST_ORDER}
MEASURED = ("shipped", "traced", "traced-10", "untraced", "quiet-logs", "bare")  # the in-process variants
WARM_UP = 200


def drive(endpoint: str, requests: int) -> None:
    """Inside valgrind: serve the warm-up, then ``requests`` more inside ``functools.reduce``."""
    from gevent import monkey

    monkey.patch_all()  # what the gunicorn worker does before anything else
    import gevent

    project = "user-svc" if endpoint == GET_USER else "order-svc"
    folder, app_path, _ = PROJECTS[project]
    sys.path[:0] = [str(ROOT), str(ROOT / folder)]
    module, _, name = app_path.partition(":")
    app = getattr(__import__(module, fromlist=[name]), name)
    gc.freeze()  # as the worker does once the app is loaded (svc_common.server.gunicorn_worker)

    def call(method: str, path: str, body: bytes = b"") -> bytes:
        environ = {
            "REQUEST_METHOD": method,
            "PATH_INFO": path,
            "RAW_URI": path,
            "QUERY_STRING": "",
            "SERVER_NAME": "127.0.0.1",
            "SERVER_PORT": "8000",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "REMOTE_ADDR": "127.0.0.1",
            "REMOTE_PORT": "40000",
            "HTTP_HOST": "127.0.0.1:8000",
            "HTTP_USER_AGENT": "wrk/4.2",
            "HTTP_ACCEPT": "*/*",
            "CONTENT_TYPE": "application/json",
            "CONTENT_LENGTH": str(len(body)),
            "wsgi.input": io.BytesIO(body),
            "wsgi.url_scheme": "http",
            "wsgi.errors": sys.stderr,
        }
        statuses: list[str] = []
        answer = b"".join(app(environ, lambda status, headers, exc_info=None: statuses.append(status)))
        if not statuses[0].startswith("20"):
            raise SystemExit(f"{method} {path}: {statuses[0]} {answer[:300]!r}")
        gevent.sleep(0)  # the worker's other greenlets (the span exporter) get their turn, as under load
        return answer

    if endpoint == GET_USER:
        user = json.loads(call("POST", "/users", b'{"name": "Bench", "email": "bench@example.com"}'))
        request = functools.partial(call, "GET", f"/users/{user['id']}")
    else:
        body = json.dumps({"user_id": int(os.environ["BENCH_USER_ID"]), "items": [{"sku": "BENCH", "quantity": 2,
                           "unit_price": "9.99"}]}).encode()  # fmt: skip
        request = functools.partial(call, "POST", "/orders", body)
    for _ in range(WARM_UP):
        request()
    functools.reduce(lambda _, __: request(), range(requests), None)  # the counted part


def count(variant: str, endpoint: str, requests: int, env: dict[str, str], workdir: Path) -> int:
    """Instructions per request of one variant and endpoint (one valgrind run)."""
    variant_env, _, bare = VARIANTS[variant]
    folder, _, bare_settings = PROJECTS["user-svc" if endpoint == GET_USER else "order-svc"]
    full_env = {
        **os.environ,
        "DJANGO_SECRET_KEY": "bench-only-not-a-secret",
        "PYTHONHASHSEED": "0",
        **{key: str(value) for key, value in variant_env.items()},
        **env,
    }
    if bare:
        full_env["DJANGO_SETTINGS_MODULE"] = bare_settings
    name = f"{variant}-{'get' if endpoint == GET_USER else 'post'}"
    command = [
        "valgrind",
        "--tool=callgrind",
        "--collect-atstart=no",
        "--toggle-collect=functools_reduce",
        f"--callgrind-out-file={workdir / name}.callgrind",
        sys.executable,
        __file__,
        "--drive",
        endpoint,
        "--requests",
        str(requests),
    ]
    # The service's log lines go nowhere; valgrind's summary comes on stderr.
    result = subprocess.run(
        command, cwd=ROOT / folder, env=full_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    collected = re.search(r"Collected : (\d+)", result.stderr)
    if result.returncode != 0 or not collected:
        raise RuntimeError(f"{name}: valgrind exited with {result.returncode}\n{result.stderr[-3000:]}")
    if int(collected.group(1)) == 0:
        raise RuntimeError(f"{name}: nothing counted: this Python has no symbol for functools_reduce")
    return int(collected.group(1)) // requests


@contextlib.contextmanager
def live_user_service(workdir: Path) -> Iterator[tuple[str, int]]:
    """A shipped user service for the order service to call, and a user that exists there."""
    with service("user-svc", str(workdir), {}, bare=False) as url:
        user = post_json(f"{url}/users", {"name": "Bench", "email": "bench@example.com"})
        yield url, int(str(user["id"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default=",".join(MEASURED))
    parser.add_argument("--endpoints", default="get,post", help="get, post or both")
    parser.add_argument("--requests", type=int, default=512, help="counted per run (default: one batch of GET spans)")
    parser.add_argument("--json", help="also write the counts to this file")
    parser.add_argument("--drive", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.drive:
        drive(args.drive, args.requests)
        return
    if not shutil.which("valgrind"):
        sys.exit("valgrind is not installed (Debian package 'valgrind'; ./manage_all.sh test installs it)")
    variants = args.variants.split(",")
    endpoints = [ENDPOINTS[name] for name in args.endpoints.split(",")]
    unknown = set(variants) - set(MEASURED)
    if unknown:
        sys.exit(f"unknown variants {sorted(unknown)}: choose among {', '.join(MEASURED)}")
    with tempfile.TemporaryDirectory(prefix="bench-instructions-") as tmp, contextlib.ExitStack() as stack:
        workdir = Path(tmp)
        env: dict[str, dict[str, str]] = {endpoint: {} for endpoint in endpoints}
        if POST_ORDER in endpoints:
            url, user_id = stack.enter_context(live_user_service(workdir))
            env[POST_ORDER] = {"USER_SVC_URL": url, "BENCH_USER_ID": str(user_id)}
        sink = stack.enter_context(otlp_sink())
        traced = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{sink.server_port}",
            "OTEL_BSP_SCHEDULE_DELAY": "3600000",
        }
        runs = {
            (variant, endpoint): {**env[endpoint], **(traced if VARIANTS[variant][1] else {})}
            for endpoint in endpoints
            for variant in variants
        }
        with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
            futures = {key: pool.submit(count, *key, args.requests, run_env, workdir) for key, run_env in runs.items()}
            counts = {key: future.result() for key, future in futures.items()}
    print(f"callgrind: instructions per request, {args.requests} requests counted per run, after {WARM_UP} unrecorded")
    print(f"{'variant':10} {'endpoint':16} {'instructions':>13} {'bare / this':>12}")
    results: dict[str, dict[str, int]] = {}
    for (variant, endpoint), instructions in counts.items():
        results.setdefault(variant, {})[endpoint] = instructions
    for variant in variants:
        for endpoint in endpoints:
            instructions = results[variant][endpoint]
            bare = results.get("bare", {}).get(endpoint)
            ratio = f"{bare / instructions:.2f}x" if bare else "-"
            print(f"{variant:10} {endpoint:16} {instructions:>13,} {ratio:>12}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
