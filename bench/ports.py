"""Free loopback ports for the servers bench starts. Here, in bench, so that bench needs nothing from
the tests; the tests' helpers (testsupport.services) and the mesh rehearsal use this one too: one copy
of the rule."""

import functools
import os
import random
import socket
from pathlib import Path


@functools.cache
def _ephemeral_ports_start() -> int:
    """Where the kernel's range of source ports for outgoing connections starts."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


_handed_out: set[int] = set()


def _port_slice() -> tuple[int, int]:
    """[low, high) of the ports this process hands out: below the source-port range, and this
    pytest-xdist worker's share of it (its programs, bench.py say, inherit the worker's variables)."""
    high = _ephemeral_ports_start()
    low = max(1024, high - 12_000)
    worker, count = os.environ.get("PYTEST_XDIST_WORKER", ""), os.environ.get("PYTEST_XDIST_WORKER_COUNT", "")
    if worker.startswith("gw") and worker[2:].isdigit() and count.isdigit() and int(count) > 1:
        share = (high - low) // int(count)
        low += share * int(worker[2:])
        high = low + share
    return low, high


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing uses now, for a server the caller starts next. Taken below the kernel's range
    of source ports: a port from ``bind(0)`` comes from that range, and until the server binds it,
    any outgoing connection on the machine may take it as its source port, and the server then
    cannot bind (seen: an order service whose port Envoy had just connected from). Never the same
    port twice in one process, so two servers started one after the other do not get the same one.
    Under pytest-xdist each worker takes from a slice of its own, so no two workers hand out one port."""
    low, high = _port_slice()
    for _ in range(1000):
        port = random.randrange(low, high)
        if port in _handed_out:
            continue
        with socket.socket() as sock:
            try:
                sock.bind((host, port))  # without SO_REUSEADDR: a port still in TIME_WAIT is passed over
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free port between {low} and {high} on {host}")
