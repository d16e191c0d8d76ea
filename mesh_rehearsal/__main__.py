"""``./manage_all.sh mesh up|down|status|exec POD -- CMD``: the data-plane rehearsal for a person.

- ``up`` builds the images it needs (tools/local_images.py and the client image), brings the mesh up
  under ``$RUN_DIR/mesh`` and prints the gateway URL, the Prometheus URL and where traces go; a second
  ``up`` only prints them. ``--mtls-mode PERMISSIVE`` and ``--gateway-sampling 100`` try the mesh
  with another PeerAuthentication mode or sampling than istio/ says.
- ``down`` removes every container, the network and the run directory (the capture rules live in
  the pods' network namespaces and go with them).
- ``status`` lists the pods and their containers.
- ``exec POD -- CMD`` runs CMD in the pod's app container (its network namespace and user), like
  ``kubectl exec``: ``./manage_all.sh mesh exec sleep -- curl -s http://user-svc.meshed.svc.cluster.local/users``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from bench.compose_stack import docker_cli

from . import runtime
from .model import ROOT

RECEIVER = "trace-receiver"


def run_dir() -> Path:
    return Path(os.environ.get("RUN_DIR", ROOT / ".run")) / "mesh"


def start_receiver(mesh: runtime.Mesh, images: dict[str, str]):
    """A container on the host's network running trace_receiver.py on the bridge address."""

    def start(address: str) -> int:
        directory = mesh.run_dir / "traces"
        directory.mkdir(parents=True, exist_ok=True)
        os.chown(directory, 10001, 10001)
        port_file = directory / "port"
        runtime.docker(
            "run", "-d", "--name", f"{mesh.prefix}-{RECEIVER}", "--label", f"{runtime.LABEL}={mesh.prefix}",
            "--network", "host", "--cap-drop", "ALL", "--security-opt", "no-new-privileges", "--read-only",
            "-v", f"{ROOT / 'mesh_rehearsal'}:/opt/mesh/mesh_rehearsal:ro",
            "-v", f"{directory}:/traces", "-e", "PYTHONPATH=/opt/mesh", "-w", "/opt/mesh",
            images["USER_SVC_IMAGE"], "python", "-m", "mesh_rehearsal.trace_receiver",
            "--host", address, "--port-file", "/traces/port", "--out", "/traces/spans.jsonl",
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if port_file.exists() and port_file.read_text().strip():
                return int(port_file.read_text())
            time.sleep(0.2)
        raise RuntimeError("the trace receiver did not start")

    return start


def print_endpoints(state: runtime.MeshState) -> None:
    print(f"gateway:        {state.gateway_url}   (try {state.gateway_url}/users)")
    print(f"prometheus:     {state.prometheus_url}   (try istio_requests_total)")
    if state.collector:
        address, port = state.collector
        print(
            f"trace receiver: OTLP/HTTP on {address}:{port}; spans in {Path(state.run_dir) / 'traces' / 'spans.jsonl'}"
        )
    print("pods:           " + ", ".join(p.name for p in state.pods) + "   (./manage_all.sh mesh exec POD -- CMD)")


def command_up(mtls_mode: str | None, gateway_sampling: float | None) -> int:
    directory = run_dir()
    if (directory / runtime.STATE_FILE).exists():
        state = runtime.MeshState.load(directory)
        running = runtime.docker("ps", "-q", "--filter", f"label={runtime.LABEL}={state.prefix}").stdout.split()
        if not running:
            print(f"{directory} is left from a mesh that is gone: ./manage_all.sh mesh down first", file=sys.stderr)
            return 1
        print("the mesh is already up:", file=sys.stderr)
        print_endpoints(state)
        return 0
    images = runtime.build_images(log=lambda line: print(f"image {line}", file=sys.stderr))
    mesh = runtime.Mesh(directory, images, mtls_mode=mtls_mode, gateway_sampling=gateway_sampling)
    mesh.start_collector = start_receiver(mesh, images)
    try:
        state = mesh.up(log=lambda line: print(line, file=sys.stderr))
    except BaseException:
        mesh.down()
        raise
    print_endpoints(state)
    return 0


def command_down() -> int:
    directory = run_dir()
    if not (directory / runtime.STATE_FILE).exists():
        print("the mesh is not up", file=sys.stderr)
        return 0
    state = runtime.MeshState.load(directory)
    runtime.down(state.prefix, directory)
    print(f"removed {state.prefix}: containers, network and {directory}", file=sys.stderr)
    return 0


def command_status() -> int:
    directory = run_dir()
    if not (directory / runtime.STATE_FILE).exists():
        print("the mesh is not up")
        return 3
    state = runtime.MeshState.load(directory)
    listing = runtime.docker(
        "ps", "-a", "--filter", f"label={runtime.LABEL}={state.prefix}", "--format", "{{.Names}}\t{{.Status}}"
    ).stdout
    print(listing.rstrip())
    print_endpoints(state)
    return 0 if "Exited" not in listing else 1


def command_exec(pod: str, command: list[str]) -> int:
    state = runtime.MeshState.load(run_dir())
    state.pod(pod)  # an unknown pod raises
    flags = ["-i", "-t"] if sys.stdin.isatty() and sys.stdout.isatty() else ["-i"]
    return subprocess.run([docker_cli(), "exec", *flags, state.container(pod), *command]).returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="./manage_all.sh mesh", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up")
    up.add_argument(
        "--mtls-mode",
        choices=("STRICT", "PERMISSIVE"),
        help="every sidecar's inbound mTLS mode instead of what istio/peerauthentication.yaml says",
    )
    up.add_argument(
        "--gateway-sampling",
        type=float,
        metavar="PERCENT",
        help="the gateway's trace sampling instead of istio/install/mesh-telemetry.yaml's (the sidecars follow it)",
    )
    sub.add_parser("down")
    sub.add_parser("status")
    exec_parser = sub.add_parser("exec")
    exec_parser.add_argument("pod")
    exec_parser.add_argument("cmd", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if args.command == "exec":
        command = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
        if not command:
            parser.error("exec POD -- CMD: no command")
        try:
            return command_exec(args.pod, command)
        except (FileNotFoundError, ValueError):
            print(f"no pod {args.pod!r} (is the mesh up?)", file=sys.stderr)
            return 2
    if args.command == "up":
        return command_up(args.mtls_mode, args.gateway_sampling)
    return {"down": command_down, "status": command_status}[args.command]()


if __name__ == "__main__":
    sys.exit(main())
