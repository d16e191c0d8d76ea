"""Memory of PostgreSQL backends held open by the services' pools, for the Cluster's connection
budget and memory settings (docs/sizing.md).

Starts Debian's PostgreSQL (bench/postgres.py, as the ``postgres`` variant does) with the production Cluster's
shared_buffers and work_mem, migrates the user service's schema, and opens ``--connections``
connections as the service's role. Each runs what a pooled connection of the service runs (insert a
user, read it back by id, list a page), then stays idle, as a pool keeps it. Reported from
/proc/<pid>/smaps_rollup of every backend: private memory (what the backend holds of its own) and
PSS (its private memory plus its share of the shared buffers it touched).

    .venv/bin/python bench/postgres_backends.py --connections 100
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402

from bench import postgres  # noqa: E402
from bench.ports import free_port  # noqa: E402


def smaps_kib(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, value, *_ = line.split()
        fields[name.rstrip(":")] = int(value)
    return fields


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=100)
    args = parser.parse_args()
    server_settings = {"shared_buffers": "512MB", "work_mem": "4MB", "max_connections": str(args.connections + 20)}
    with postgres.databases(ROOT, free_port(), server_settings) as environments:
        url = environments["user-svc"]["DATABASE_URL"]
        connections = []
        for n in range(args.connections):
            conn = psycopg.connect(url, autocommit=True)
            email = f"sizing-{n}-{uuid.uuid4().hex[:8]}@example.com"
            (user_id,) = conn.execute(
                "INSERT INTO users (name, email, email_key) VALUES (%s, %s, %s) RETURNING id",
                (f"sizing {n}", email, email.lower()),
            ).fetchone()
            conn.execute("SELECT id, name, email FROM users WHERE id = %s", (user_id,)).fetchone()
            conn.execute("SELECT id, name, email FROM users ORDER BY id LIMIT 50").fetchall()
            connections.append(conn)
        # The service's own role sees its own sessions' pids: no superuser needed.
        with psycopg.connect(url, autocommit=True) as observer:
            pids = [
                pid
                for (pid,) in observer.execute(
                    "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
                ).fetchall()
            ]
            version = observer.execute("SHOW server_version").fetchone()[0]
        rollups = [smaps_kib(pid) for pid in pids]
        private = [(r["Private_Clean"] + r["Private_Dirty"]) / 1024 for r in rollups]
        pss = [r["Pss"] / 1024 for r in rollups]
        report = {
            "postgres": version.split()[0],
            "backends": len(pids),
            "private_mib_median": round(statistics.median(private), 2),
            "private_mib_max": round(max(private), 2),
            "private_mib_total": round(sum(private), 1),
            "pss_mib_median": round(statistics.median(pss), 2),
            "pss_mib_total": round(sum(pss), 1),
        }
        print(json.dumps(report, indent=2))
        for conn in connections:
            conn.close()


if __name__ == "__main__":
    main()
