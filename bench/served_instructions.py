"""Count the CPU instructions each variant and reference spends per request through the real server:
gunicorn under its worker model, HTTP parsing, the sockets, the app, the worker's background greenlets
and threads, all of it (the kernel's part aside), with valgrind's callgrind in the worker process
while a client on loopback holds keep-alive connections to it.

bench.py's targets are throughput ratios (``shipped`` against ``seed``, ``traced`` against ``bare``...),
and wrk's figures on this 2-core machine move by a fifth to a third from round to round, more than
the margins in question. A served request's instruction count does not move that way, and a ratio of
counts is what a ratio of throughputs comes to when the server's CPU is the bottleneck, as it is under
bench.py's load: so this prints, for bench.py's variants and references, the same ratios from counts.
What it cannot see: the kernel's share (socket calls, about a tenth of a request's CPU time here),
caches and scheduling. Between our variants (one worker model, the same calls) the ratios fall inside
the spread of wrk's rounds and do not drift; against ``seed`` as deployed they do not: its eight threads pay in the
kernel and in handing the GIL over, its order app opens a connection per call, and none of that is
counted (read wrk's ratio to ``seed`` there). ``instructions.py`` counts the app alone, in process; this adds what every
variant pays alike, which is what makes a ratio of counts comparable with one of throughputs.

    .venv/bin/python bench/served_instructions.py                        # every variant and reference
    .venv/bin/python bench/served_instructions.py --variants bare,traced --endpoints get

Each measurement runs the measured service under callgrind twice at once (each boots in about a
minute): one worker serves ``--warm-up`` requests, the other ``--warm-up`` + ``--requests``, both over
``--connections`` connections; the difference of the two workers' counts, from fork to exit, over
``--requests`` is the figure (callgrind_control cannot reach a forked worker, so no zero-and-dump).
POST /orders counts the order service; the user service it calls runs natively (ours: shipped, the
seed's: its own user app).
"""

import argparse
import concurrent.futures
import contextlib
import http.client
import json
import os
import re
import shutil
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench import (  # noqa: E402
    FLOOR_APP,
    GET_USER,
    POST_ORDER,
    REFERENCES,
    SEED_ORDERS_APP,
    SEED_USERS_APP,
    VARIANTS,
    gunicorn,
    otlp_sink,
    post_json,
    reference_command,
    served,
    service,
    service_command,
)

ENDPOINTS = {"get": GET_USER, "post": POST_ORDER}
MEASURED = ("shipped", "traced", "traced-10", "untraced", "quiet-logs", "bare", *REFERENCES)
COMPARED = ("seed", "seed-ours", "floor", "bare")
BOOT_WITHIN = 600  # seconds: Django's start-up under callgrind runs about fifty times slower
ORDER_BODY = {"items": [{"sku": "BENCH", "quantity": 2, "unit_price": "9.99"}]}


def measured_command(variant: str, endpoint: str, env: dict[str, str]) -> tuple[list[str], Path, dict[str, str]]:
    """(gunicorn's arguments, working directory, environment) of the process counted: the user
    service for GET, the order service for POST, each served as bench.py serves it."""
    if variant in REFERENCES:
        app = FLOOR_APP if variant == "floor" else SEED_USERS_APP if endpoint == GET_USER else SEED_ORDERS_APP
        return reference_command(variant, app, env)
    variant_env, _, bare = VARIANTS[variant]
    project = "user-svc" if endpoint == GET_USER else "order-svc"
    return service_command(project, {**{key: str(value) for key, value in variant_env.items()}, **env}, bare)


def worker_instructions(
    arguments: list[str], cwd: Path, env: dict[str, str], out: Path, ready_path: str, serve: Callable[[str], None]
) -> int:
    """Start gunicorn with ``arguments`` under callgrind on a free loopback port, call ``serve`` with
    its URL, stop it, and return the instructions its worker ran from fork to exit (valgrind follows
    the fork; each process writes its counts as it exits)."""
    env = {
        **env,
        # Overrides the config file's: a worker booting or stopping under callgrind must not be killed.
        "GUNICORN_CMD_ARGS": f"--timeout {BOOT_WITHIN} --graceful-timeout {BOOT_WITHIN}",
        "PYTHONHASHSEED": "0",
    }
    launcher = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}.%p"]
    with gunicorn(
        arguments, cwd, env, out, ready_path, launcher=launcher, ready_within=BOOT_WITHIN, stop_within=BOOT_WITHIN
    ) as (url, master):
        (worker,) = children_of(master.pid)
        serve(url)
    counts = Path(f"{out}.{worker}")
    totals = re.search(r"^totals: (\d+)", counts.read_text(), re.M) if counts.exists() else None
    if not totals:
        raise RuntimeError(f"{out.name}: the worker ({worker}) left no counts; see {out}-*.log")
    return int(totals.group(1))


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                # The fourth field is the parent's pid; the command's name (second) may hold spaces.
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
    return found


def serve_requests(url: str, method: str, path: str, body: bytes | None, requests: int, connections: int) -> None:
    """``requests`` requests over ``connections`` keep-alive connections at once; each must be a 2xx."""
    failures: list[str] = []
    host, port = url.removeprefix("http://").split(":")
    headers = {"Content-Type": "application/json"} if body is not None else {}

    def client(count: int) -> None:
        connection = http.client.HTTPConnection(host, int(port), timeout=BOOT_WITHIN)
        try:
            for _ in range(count):
                connection.request(method, path, body=body, headers=headers)
                response = connection.getresponse()
                answer = response.read()
                if not 200 <= response.status < 300:
                    failures.append(f"{method} {path}: {response.status} {answer[:200]!r}")
                    return
        except OSError as error:
            failures.append(f"{method} {path}: {error}")
        finally:
            connection.close()

    shares = [requests // connections + (1 if index < requests % connections else 0) for index in range(connections)]
    threads = [threading.Thread(target=client, args=(share,)) for share in shares if share]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise RuntimeError(failures[0])


def count(variant: str, endpoint: str, args: argparse.Namespace, workdir: Path) -> int:
    """Instructions per request in the worker serving ``endpoint`` for ``variant``: the worker's
    whole life serving ``warm_up + requests`` requests, less its whole life serving ``warm_up``
    (start-up, warm-up and shutdown cancel out), over ``requests``."""
    name = f"{variant}-{'get' if endpoint == GET_USER else 'post'}"
    with contextlib.ExitStack() as stack:
        env: dict[str, str] = {}
        if variant in VARIANTS and VARIANTS[variant][1]:
            sink = stack.enter_context(otlp_sink())
            env["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://127.0.0.1:{sink.server_address[1]}"
        user_id = None
        if endpoint == POST_ORDER:
            if variant in REFERENCES:
                users = served(*reference_command(variant, SEED_USERS_APP, {}), workdir / f"{name}-users", "/readyz")
                user_url = stack.enter_context(users)
            else:
                user_url = stack.enter_context(service("user-svc", str(workdir), {}, bare=False))
            env["USER_SVC_URL"] = user_url
            user_id = post_json(f"{user_url}/users", {"name": "Bench", "email": f"{name}@example.com"})["id"]
        arguments, cwd, full_env = measured_command(variant, endpoint, env)
        ready_path = "/" if variant == "floor" else "/readyz"

        def serving(total: int) -> Callable[[str], None]:
            def serve(url: str) -> None:
                if endpoint == POST_ORDER:
                    body = json.dumps({"user_id": user_id, **ORDER_BODY}).encode()
                    serve_requests(url, "POST", "/orders", body, total, args.connections)
                elif variant == "floor":
                    serve_requests(url, "GET", "/", None, total, args.connections)
                else:  # the same extra request in both lives: it cancels out
                    # A service under callgrind answers its first POST in seconds, more on a busy machine.
                    user = post_json(f"{url}/users", {"name": "Bench", "email": f"{name}@example.com"}, BOOT_WITHIN)
                    serve_requests(url, "GET", f"/users/{user['id']}", None, total, args.connections)

            return serve

        # The two lives at once: each boots for a minute under callgrind, and counts do not depend on
        # what else the machine is doing.
        with concurrent.futures.ThreadPoolExecutor(max_workers=2) as lives:
            short, long = (
                lives.submit(worker_instructions, arguments, cwd, full_env, workdir / f"{name}-{total}", ready_path,
                             serving(total))
                for total in (args.warm_up, args.warm_up + args.requests)
            )  # fmt: skip
            return (long.result() - short.result()) // int(args.requests)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default="shipped,traced,bare,seed,seed-ours,floor")
    parser.add_argument("--endpoints", default="get,post", help="get, post or both")
    parser.add_argument("--requests", type=int, default=512, help="counted per measurement")
    parser.add_argument("--warm-up", type=int, default=200, help="served first, not counted")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--json", help="also write the counts to this file")
    args = parser.parse_args()
    if not shutil.which("valgrind"):
        sys.exit("valgrind is not installed (Debian package 'valgrind'; ./manage_all.sh test installs it)")
    variants = args.variants.split(",")
    unknown = set(variants) - set(MEASURED)
    if unknown:
        sys.exit(f"unknown variants {sorted(unknown)}: choose among {', '.join(MEASURED)}")
    endpoints = [ENDPOINTS[name] for name in args.endpoints.split(",")]
    runs = [(v, e) for v in variants for e in endpoints if not (v == "floor" and e == POST_ORDER)]
    results: dict[str, dict[str, int]] = {}
    with (
        tempfile.TemporaryDirectory(prefix="bench-served-") as tmp,
        concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool,
    ):
        futures = {key: pool.submit(count, *key, args, Path(tmp)) for key in runs}
        for (variant, endpoint), future in futures.items():
            results.setdefault(variant, {})[endpoint] = future.result()
    print_table(results, args)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


def print_table(results: dict[str, dict[str, int]], args: argparse.Namespace) -> None:
    """One line per variant and endpoint; each ratio is reference's count over this one's, which is
    what this one's throughput over the reference's comes to when the CPU is what limits both."""
    compared = [name for name in COMPARED if name in results]
    print(
        f"callgrind, served: instructions per request in the worker, {args.requests} requests over "
        f"{args.connections} connections, after {args.warm_up} unrecorded"
    )
    print(f"{'variant':10} {'endpoint':16} {'instructions':>13}" + "".join(f" {'vs ' + n:>12}" for n in compared))
    for variant, endpoints in results.items():
        for endpoint, instructions in endpoints.items():
            line = f"{variant:10} {endpoint:16} {instructions:>13,}"
            for name in compared:
                reference = results[name].get(endpoint)
                line += f" {f'{reference / instructions:.2f}x' if reference else '-':>12}"
            print(line)


if __name__ == "__main__":
    main()
