#!/usr/bin/env python3
"""Run a local Prometheus (Debian's `prometheus` binary) that scrapes the services started by
`./manage_all.sh start`, with the alert rules of prometheus/alerts.yml. Used by `./manage_all.sh monitor`.

    python3 prometheus/run_local.py --user-port 8001 --order-port 8002 [--port 9090]

Config and TSDB go to $RUN_DIR/prometheus (default .run/prometheus, git-ignored). Prometheus runs in
the foreground (this process is replaced by it); stop it with Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from render_config import DEFAULT_SCRAPE_INTERVAL, write_config

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--user-port", type=int, default=int(os.environ.get("USER_SVC_PORT", 8001)))
    parser.add_argument("--order-port", type=int, default=int(os.environ.get("ORDER_SVC_PORT", 8002)))
    parser.add_argument("--host", default="127.0.0.1", help="where the services listen")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PROMETHEUS_PORT", 9090)))
    parser.add_argument("--scrape-interval", default=DEFAULT_SCRAPE_INTERVAL)
    parser.add_argument("--data-dir", default=str(Path(os.environ.get("RUN_DIR", ROOT / ".run")) / "prometheus"))
    args = parser.parse_args(argv)

    binary = shutil.which("prometheus")
    if not binary:
        print(
            "error: `prometheus` not found; install it with tools/setup-test-deps.sh (Debian package prometheus)",
            file=sys.stderr,
        )
        return 1
    data_dir = Path(args.data_dir)
    config = write_config(data_dir, args.user_port, args.order_port, args.host, args.scrape_interval)
    print(
        f"Prometheus on http://127.0.0.1:{args.port} scraping user-svc {args.host}:{args.user_port} and "
        f"order-svc {args.host}:{args.order_port} (config {config})",
        file=sys.stderr,
    )
    command = [
        binary,
        f"--config.file={config}",
        f"--storage.tsdb.path={data_dir / 'data'}",
        f"--web.listen-address=127.0.0.1:{args.port}",
        "--storage.tsdb.retention.time=2d",
        "--web.enable-lifecycle",
    ]
    os.execv(binary, command)
    return 0  # not reached


if __name__ == "__main__":
    raise SystemExit(main())
