"""What one log line costs, as the services configure logging (svc_common.observability.log_config).

Applies ``build_logging_config("INFO")`` as Django does, binds a request id as the access-log middleware
does, and logs N lines of each kind with the log stream on /dev/null:

- ``structlog``: a domain event (``order_created`` with two fields), as the services write one per write;
- ``stdlib``: a standard-library record with %-arguments (gunicorn's, tenacity's lines);
- ``filtered``: a structlog event below the level (DEBUG), which must cost next to nothing.

For each, the calling thread's time per line (what a request pays) and the whole process's CPU time
per line once the writer thread has written them all (what the machine pays), best of ``--repeat``
rounds, and how many lines the writer dropped (a figure is only comparable when it drops none).
Timings move with whatever else the machine runs; ``--instructions`` counts instructions instead
(valgrind's callgrind, every thread of the process: a run writing ``--lines`` lines less a run writing
none, divided by the lines), which repeat within a fraction of a percent.

    .venv/bin/python bench/log_lines.py                  # 20,000 lines of each kind, best of 5
    .venv/bin/python bench/log_lines.py --lines 5000 --repeat 3
    .venv/bin/python bench/log_lines.py --instructions --lines 2000

``BENCH_SOURCE_ROOT=<another checkout>`` measures that checkout's svc_common with this script (how
docs/benchmarks.md's "before" figures were made: ``git archive <commit> svc_common | tar -x -C <dir>``).
"""

import argparse
import logging
import logging.config
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, os.environ.get("BENCH_SOURCE_ROOT") or str(Path(__file__).resolve().parents[1]))

import structlog
from prometheus_client import REGISTRY

from svc_common.observability.log_config import build_logging_config


def dropped() -> float:
    return REGISTRY.get_sample_value("log_lines_dropped_total") or 0.0


def measure(log_line: Callable[[int], None], lines: int) -> tuple[float, float, float]:
    """Microseconds per line in the caller, process CPU microseconds per line, lines dropped."""
    logging.config.dictConfig(build_logging_config("INFO"))  # a fresh handler and writer thread per round
    handler = logging.root.handlers[0]
    log_line(-1)  # the writer thread starts on the first line
    time.sleep(0.1)
    before_drops = dropped()
    cpu_start, wall_start = time.process_time(), time.perf_counter()
    for n in range(lines):
        log_line(n)
    wall = time.perf_counter() - wall_start
    handler.close()  # waits until the writer has written every queued line
    cpu = time.process_time() - cpu_start
    return wall / lines * 1e6, cpu / lines * 1e6, dropped() - before_drops


def kinds_of_line() -> dict[str, Callable[[int], None]]:
    structlog.contextvars.bind_contextvars(request_id="6f1c1a2e-8a51-4c1e-9d3e-2b7d8f0c4a11")
    events = structlog.get_logger("order_service.services")
    records = logging.getLogger("gunicorn.error")
    return {
        "structlog": lambda n: events.info("order_created", order_id=n, user_id=7),
        "stdlib": lambda n: records.info("Worker ready (pid: %s)", n),
        "filtered": lambda n: events.debug("below_the_level", n=n),
    }


def write_lines(kind: str, lines: int) -> None:
    """The process callgrind counts: configure, write ``lines`` lines of ``kind``, close."""
    sys.stdout = open(os.devnull, "w")  # noqa: SIM115
    logging.config.dictConfig(build_logging_config("INFO"))
    log_line = kinds_of_line()[kind]
    for n in range(lines):
        log_line(n)
    logging.root.handlers[0].close()


def instructions(kind: str, lines: int, workdir: str) -> int:
    out = os.path.join(workdir, f"{kind}-{lines}.callgrind")
    subprocess.run(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, __file__,
         "--count-one", kind, "--lines", str(lines)],
        check=True, capture_output=True, env={**os.environ, "PYTHONHASHSEED": "0"},
    )  # fmt: skip
    with open(out) as counted:
        (total,) = re.findall(r"^(?:summary|totals): (\d+)", counted.read(), re.MULTILINE)[:1]
    return int(total)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--instructions", action="store_true", help="count instructions with callgrind")
    parser.add_argument("--count-one", help=argparse.SUPPRESS)  # the process --instructions counts
    args = parser.parse_args()

    if args.count_one:
        write_lines(args.count_one, args.lines)
        return
    if args.instructions:
        print(f"{'line':<10} {'instructions/line':>18}")
        with tempfile.TemporaryDirectory() as workdir:
            for kind in kinds_of_line():
                per_line = (instructions(kind, args.lines, workdir) - instructions(kind, 0, workdir)) / args.lines
                print(f"{kind:<10} {per_line:>18,.0f}", flush=True)
        return

    devnull = open(os.devnull, "w")  # noqa: SIM115  # the log stream for the whole run
    report = sys.stdout
    sys.stdout = devnull  # the handler writes to sys.stdout as it is when LOGGING is applied
    print(f"{'line':<10} {'caller us/line':>15} {'process CPU us/line':>20} {'dropped':>8}", file=report)
    for kind, log_line in kinds_of_line().items():
        rounds = [measure(log_line, args.lines) for _ in range(args.repeat)]
        caller = min(r[0] for r in rounds)
        cpu = min(r[1] for r in rounds)
        lost = max(r[2] for r in rounds)
        print(f"{kind:<10} {caller:>15.2f} {cpu:>20.2f} {lost:>8.0f}", file=report)


if __name__ == "__main__":
    main()
